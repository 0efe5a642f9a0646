"""Atomic file writes: the one place the project writes a finished file.

Every output (stores, checkpoints, JSON results, reports) is written to ``<name>.tmp-<pid>``
beside its target, flushed and fsynced, then renamed over it. A job killed mid-write (preemption,
out of memory, wall-time limit, Ctrl-C) therefore leaves either the previous complete file or
none, never a truncated one that a later step would read as valid.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def temporary_path(path: str | os.PathLike) -> Path:
    """The scratch name :func:`atomic_path` writes before the rename (same folder, same disk)."""
    path = Path(path)
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed to ``path``, on error deleted.

    For writers that open the file themselves (h5py, ``torch.save`` to a name, csv).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """``open(path, mode)`` that only appears under ``path`` once the block finished and the
    bytes are on disk (flush + fsync before the rename)."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_open writes whole files; mode {mode!r} is not a 'w' mode")
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1,
               sort_keys: bool = False) -> Path:
    """JSON (UTF-8) written atomically; ``indent=None`` for the compact form of large files."""
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys))


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy ``src`` to ``dst`` atomically (a reader of ``dst`` never sees a partial copy)."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)

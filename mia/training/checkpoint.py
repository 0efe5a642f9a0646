"""Checkpoint files that load with ``torch.load(weights_only=True)``, and the RNG state in them.

A checkpoint is data, never code: ``torch.load(..., weights_only=False)`` unpickles arbitrary
objects, so a crafted ``model.pt`` (a download, a shared results folder) could run a shell command
the moment it is loaded. Everything saved here is a tensor, a plain dict/list/tuple, a number, a
string or None, which the restricted unpickler accepts; the numpy and Python RNG states are turned
into tensors and lists for that reason. :func:`load_checkpoint` always passes
``weights_only=True``.

Writes go through :func:`mia.io.atomic_open`: a job killed mid-write leaves the previous complete
checkpoint in place, never a truncated one. :func:`save_checkpoint` returns the SHA-256 of the
bytes it wrote (hashed on the way to the disk, so it costs no second read): the loop records the
digest of ``best.pt`` in ``last.pt``, and nothing is published that does not match it. A failed
write (a full disk) is raised as the ``OSError`` the disk gave, naming the checkpoint, instead of
torch's ``unexpected pos`` ``RuntimeError``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mia.io import atomic_open


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or not one of ours."""


class _HashingWriter:
    """The file object torch.save writes through: hashes the bytes and keeps the disk's error
    (torch turns a failed ``write`` into ``RuntimeError: unexpected pos``)."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.sha256 = hashlib.sha256()
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            written = self.f.write(data)
        except OSError as err:
            self.error = err
            raise
        self.sha256.update(memoryview(data).cast("B")[:written])
        return written

    def flush(self) -> None:
        self.f.flush()


def save_checkpoint(obj: Any, path: str | os.PathLike) -> str:
    """``torch.save`` to a temporary file, then rename it to ``path``; return the SHA-256 of the
    file. A failed write raises the disk's ``OSError`` with ``filename`` = ``path``."""
    path = Path(path)
    try:
        with atomic_open(path, "wb") as f:
            writer = _HashingWriter(f)
            try:
                torch.save(obj, writer)
            except RuntimeError as err:
                if writer.error is None:
                    raise
                raise writer.error from err
    except OSError as err:
        if err.filename is None or ".tmp-" in str(err.filename):
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise
    return writer.sha256.hexdigest()


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file, then rename it to ``path`` (see
    :func:`save_checkpoint`, which also returns the file's digest)."""
    save_checkpoint(obj, path)
    return Path(path)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _what_it_is(path: Path) -> str | None:
    """Why ``path`` cannot be a torch.save checkpoint, judged from its first bytes (None: it
    looks like one: a zip archive, or a legacy pickle)."""
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        return "the file is empty (an interrupted copy?)"
    if head.startswith(b"PK"):
        if zipfile.is_zipfile(path):
            return None
        return ("the file is truncated or damaged: it starts as torch.save's zip archive but its "
                "end is missing (an interrupted copy or a full disk?)")
    if head[:1] == b"\x80":  # a pickle (torch.save's legacy format)
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"the file is not a PyTorch checkpoint (it starts with bytes {head[:8]!r})"
    return (f"the file is text ({text[:24]!r}...), not a PyTorch checkpoint (a wrong path where "
            "a training run's model.pt belongs?)")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with the restricted (weights-only) unpickler; errors name the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found; train the model first")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    problem = _what_it_is(path)
    if problem is not None:
        raise CheckpointError(f"{path}: cannot be loaded: {problem}; delete it and rerun the rule "
                              "that writes it")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused to load: it holds objects other than tensors, numbers, strings and "
            "plain containers (a checkpoint of an older mia-repro, or a file that could run code "
            f"when unpickled). Delete it and retrain, or re-save it from trusted code. ({err})"
        ) from err
    except Exception as err:
        raise CheckpointError(f"{path}: unreadable checkpoint ({err}); it is damaged: delete it "
                              "and rerun the rule that writes it") from err
    if not isinstance(ck, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(ck).__name__}")
    return ck


def rng_state() -> dict[str, Any]:
    """Every generator training draws from (dropout: torch and CUDA; numpy and Python for code
    that uses them), as tensors and lists only."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "internal": list(internal),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

"""Copies a lab already has: use them instead of downloading, verified like a download.

``mia data register KEY FILE`` checks ``FILE`` against the pin of ``downloads.<KEY>`` and links
it where the download rule would have put it (``<downloads_dir>/<KEY>.zip``, or the weights'
own suffix), so Snakemake finds
the archive present and goes straight to its (verified) extraction. A key without a published
checksum (the bottom-up features) needs ``--trust``: the file's own SHA-256 is then recorded in
the local lock file (:mod:`mia.data.pins`), and the report marks it "pinned by the user, not by
the publisher". The lock file also remembers where each registered copy lives, so a rerun of the
download rule (Snakemake deletes an output before it reruns the job) links it again instead of
downloading gigabytes.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mia.data.download import DownloadError, file_digest
from mia.data.pins import (
    USER,
    USER_PIN_NOTE,
    Pin,
    config_pin,
    download_name,
    lock_path,
    now_utc,
    read_lock,
    record_verified,
    user_pin,
    verify_file,
    write_lock_entry,
)
from mia.io import copy_file

log = logging.getLogger(__name__)

MODES = ("link", "copy")


@dataclass(frozen=True)
class Registered:
    """What :func:`register_copy` did: where the archive now is, against which pin it was
    checked, and whether that pin was recorded from this very file (``--trust``)."""

    key: str
    archive: Path
    source: Path
    pin: Pin
    recorded_pin: bool
    mode: str


def register_copy(key: str, file: str | os.PathLike, downloads: Mapping[str, Mapping[str, Any]],
                  downloads_dir: str | os.PathLike, *, trust: bool = False,
                  mode: str = "link") -> Registered:
    """Verify ``file`` as ``downloads.<key>`` and put it at ``<downloads_dir>/<key>.zip``.

    ``mode`` ``link`` makes a symbolic link to the (absolute) file: no space used, and the
    link's own time is now, so Snakemake sees a fresh archive; ``copy`` copies it (for a copy
    on a disk that will go away). ``trust`` records the file's SHA-256 as the user's pin where
    config.yaml has none (or replaces an earlier user pin the file does not match).
    """
    if key not in downloads:
        raise ValueError(f"downloads.{key}: no such download; known keys: {sorted(downloads)}")
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: use one of {MODES}")
    source = Path(file).expanduser().resolve()
    if not source.is_file():
        raise FileNotFoundError(f"{file}: no such file to register as downloads.{key}")
    downloads_dir = Path(downloads_dir)
    lock = read_lock(downloads_dir)
    what = f"downloads.{key}"
    pin = config_pin(downloads[key], key)
    recorded = False
    if pin is None:
        earlier = user_pin(lock.get(key), key)
        if earlier is not None and not trust:
            pin = earlier
        elif trust:
            size = source.stat().st_size
            log.info("%s: recording the sha256 of %s (%d bytes): %s", what, source, size,
                     USER_PIN_NOTE)
            pin = Pin("sha256", file_digest(source, "sha256"), size, USER)
            recorded = True
        else:
            raise ValueError(
                f"{what}: no published checksum to check {source} against (config.yaml has "
                f"none for this key). If you trust this copy, run again with --trust: its own "
                f"sha256 is then recorded in {lock_path(downloads_dir)} (never in config.yaml) "
                f"and the report marks this input '{USER_PIN_NOTE}'")
    if not recorded:
        try:
            verify_file(source, pin, what)
        except (ValueError, DownloadError) as err:
            hint = (" If it is the file you mean to use and you trust it, run again with "
                    "--trust to record its own digest instead." if pin.by == USER else
                    " This is not the file the publisher released; find the right copy.")
            raise type(err)(f"{err}.{hint}") from None
    archive = downloads_dir / download_name(key, downloads[key])
    place_copy(source, archive, mode)
    record_verified(archive, pin)
    entry: dict[str, Any] = {"source": str(source), "mode": mode, "recorded": now_utc()}
    if pin.by == USER:
        entry.update(sha256=pin.digest, size=pin.size)
    write_lock_entry(downloads_dir, key, entry)
    log.info("%s: %s -> %s (%s, %s)", what, source, archive, mode, pin.describe())
    return Registered(key, archive, source, pin, recorded, mode)


def place_copy(source: Path, archive: Path, mode: str) -> None:
    """Put ``source`` at ``archive`` (replacing whatever is there) as a link or a copy."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    if archive.is_dir() and not archive.is_symlink():
        raise IsADirectoryError(f"{archive}: a folder is in the way of the archive")
    # Whatever is there goes (an earlier download or link); a new link's own time is now, so
    # Snakemake sees an archive newer than its scripts and does not plan to download it again.
    archive.unlink(missing_ok=True)
    if mode == "link":
        tmp = archive.with_name(f"{archive.name}.tmp-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        os.symlink(source, tmp)
        os.replace(tmp, archive)
    else:
        copy_file(source, archive)
        shutil.copymode(source, archive)


def restore_registered(key: str, archive: str | os.PathLike,
                       lock: Mapping[str, Mapping[str, Any]], pin: Pin) -> bool:
    """Put a registered copy back at ``archive`` (after Snakemake removed it to rerun the
    download job); True when done, False when the lock names no copy or it is gone."""
    entry = lock.get(key) or {}
    source = entry.get("source")
    if not source or not Path(source).is_file():
        if source:
            log.warning("downloads.%s: the registered copy %s is gone; downloading instead", key,
                        source)
        return False
    archive = Path(archive)
    place_copy(Path(source), archive, str(entry.get("mode", "link")))
    verify_file(archive, pin, f"downloads.{key} (registered copy {source})")
    log.info("downloads.%s: using the registered copy %s, not downloading", key, source)
    return True

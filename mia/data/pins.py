"""Pins of the workflow's downloads: the publisher's (``config.yaml``) and the user's own (a lock file).

Every archive is verified against one pin before anything reads it. A pin is the digest a
publisher gave (``downloads.<key>.sha256``, or ``.md5`` where the publisher gives only an MD5),
and the file's size when known. Some inputs have no published digest (the bottom-up features
of Anderson et al., now offline): a lab that holds a copy it trusts records that copy's own
SHA-256 with ``mia data register KEY FILE --trust``. That pin goes to a lock file beside the
downloads (``<downloads_dir>/local.lock.yaml``), never into ``config.yaml``: it says "the file
this lab has", not "the file the publisher released", and the report says so.

Verifying a 13 GB zip takes minutes, so a successful check leaves a stamp
(``<downloads_dir>/.verified/<name>.json``: size, mtime, inode and the digest); the next check of
the same unchanged file reads the stamp instead of the bytes.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from mia.data.download import (
    ChecksumError,
    DownloadSpec,
    check_size,
    file_digest,
    parse_checksum,
)
from mia.io import write_json, write_text

log = logging.getLogger(__name__)

LOCK_NAME = "local.lock.yaml"
STAMP_DIR = ".verified"
PUBLISHER = "publisher"
USER = "user"
USER_PIN_NOTE = "pinned by the user, not by the publisher"


@dataclass(frozen=True)
class Pin:
    """The bytes one download must have: ``algo`` (sha256 or md5), ``digest``, ``size`` (bytes,
    None when unknown) and ``by``: ``"publisher"`` (config.yaml) or ``"user"`` (the lock file)."""

    algo: str
    digest: str
    size: int | None = None
    by: str = PUBLISHER

    @property
    def checksum(self) -> str:
        """``"<algo>:<hex>"``, the form :class:`~mia.data.download.DownloadSpec` takes."""
        return f"{self.algo}:{self.digest}"

    def describe(self) -> str:
        who = "published checksum" if self.by == PUBLISHER else USER_PIN_NOTE
        return f"{self.algo} {self.digest} ({who})"


def config_pin(spec: Mapping[str, Any], key: str = "?") -> Pin | None:
    """The publisher's pin of ``downloads.<key>`` in the config, or None when it has none.

    ``sha256`` wins over ``md5`` (GloVe publishes only an MD5); ``sha256`` also still accepts the
    older ``"md5:<hex>"`` form."""
    size = spec.get("size")
    for field in ("sha256", "md5"):
        value = spec.get(field)
        if value:
            text = value if field == "sha256" or ":" in value else f"md5:{value}"
            algo, digest = parse_checksum(text, f"downloads.{key}.{field}")
            return Pin(algo, digest, None if size is None else int(size), PUBLISHER)
    return None


# ------------------------------------------------------------------ the user's lock file
def lock_path(downloads_dir: str | os.PathLike) -> Path:
    return Path(downloads_dir) / LOCK_NAME


def read_lock(downloads_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The lock file's entries ``{key: {sha256?, size?, source?, recorded?}}`` ({} if none)."""
    path = lock_path(downloads_dir)
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err}); fix it or delete it and register "
                         f"the files again with `mia data register`") from None
    if not isinstance(data, Mapping) or not all(isinstance(v, Mapping) for v in data.values()):
        raise ValueError(f"{path}: expected a mapping KEY -> {{sha256, size, source}}; fix it or "
                         f"delete it and register the files again with `mia data register`")
    return {str(k): dict(v) for k, v in data.items()}


def user_pin(entry: Mapping[str, Any] | None, key: str = "?") -> Pin | None:
    """The pin a lock-file entry records (only ``--trust`` registrations record one)."""
    if not entry or not entry.get("sha256"):
        return None
    algo, digest = parse_checksum(str(entry["sha256"]), f"{LOCK_NAME}: {key}.sha256")
    size = entry.get("size")
    return Pin(algo, digest, None if size is None else int(size), USER)


def write_lock_entry(downloads_dir: str | os.PathLike, key: str, entry: Mapping[str, Any]
                     ) -> Path:
    """Add or replace one entry of the lock file (written atomically, other entries kept)."""
    entries = read_lock(downloads_dir)
    entries[key] = {k: v for k, v in entry.items() if v is not None}
    header = ("# Written by `mia data register`: copies of the workflow's downloads that this lab\n"
              "# registered. A sha256 here was recorded from the lab's own copy (--trust): it is\n"
              f"# {USER_PIN_NOTE}. Never commit it into config.yaml.\n")
    path = lock_path(downloads_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, header + yaml.safe_dump(entries, sort_keys=True))


def effective_pin(key: str, spec: Mapping[str, Any], lock: Mapping[str, Mapping[str, Any]]
                  ) -> Pin | None:
    """The pin a download is checked against: the publisher's when config.yaml has one (a lock
    entry cannot override it), else the user's from the lock file, else None (refused)."""
    return config_pin(spec, key) or user_pin(lock.get(key), key)


def spec_for(url_list: list[str], pin: Pin) -> DownloadSpec:
    """A :class:`DownloadSpec` over the ordered sources, checked against ``pin``."""
    if not url_list:
        raise ValueError("a download needs at least one URL")
    return DownloadSpec(url=url_list[0], mirrors=tuple(url_list[1:]), sha256=pin.checksum,
                        size=pin.size)


def download_name(key: str, spec: Mapping[str, Any]) -> str:
    """The file name of ``downloads.<key>`` in the downloads folder: ``<key>.zip`` for an archive
    (one with ``extract_to``), ``<key><suffix of its first URL>`` for a plain file (weights)."""
    if "extract_to" in spec:
        return f"{key}.zip"
    path = urllib.parse.urlsplit(spec["urls"][0]).path
    return f"{key}{os.path.splitext(path)[1]}"


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: UP017


# ------------------------------------------------------------------ verification with a stamp
def stamp_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.parent / STAMP_DIR / f"{path.name}.json"


def _identity(path: Path) -> dict[str, int]:
    st = path.stat()  # follows a registered copy's symbolic link to the file itself
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino,
            "device": st.st_dev}


def record_verified(path: str | os.PathLike, pin: Pin, snakemake_output: bool = False) -> Path:
    """Remember that ``path``, as it is now, matches ``pin`` (after a check of its bytes).

    ``snakemake_output``: the file is a job's output, which Snakemake touches (a new mtime) and
    write-protects right after the job; the stamp then leaves the mtime open, and the next check
    accepts any mtime as long as the file is write-protected (nobody changed it in place) and
    records the mtime it finds."""
    path = Path(path)
    stamp = stamp_path(path)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    identity: dict[str, int | None] = {**_identity(path)}
    if snakemake_output:
        identity["mtime_ns"] = None
    return write_json(stamp, {**identity, "algo": pin.algo, "digest": pin.digest})


def _stamp_matches(path: Path, pin: Pin) -> bool:
    stamp = stamp_path(path)
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    now = {**_identity(path), "algo": pin.algo, "digest": pin.digest}
    if isinstance(recorded, dict) and recorded.get("mtime_ns", 0) is None:
        recorded = {**recorded, "mtime_ns": now["mtime_ns"]}
        if path.stat().st_mode & 0o222 or recorded != now:  # writable: could have changed
            return False
        record_verified(path, pin)
        return True
    return recorded == now


def verify_file(path: str | os.PathLike, pin: Pin, what: str) -> bool:
    """Check ``path`` against ``pin``: its size first (no hashing when it differs), then its
    digest, unless a stamp says this very file (same size, mtime and inode) already passed.
    Returns whether the bytes were read; raises :class:`~mia.data.download.ChecksumError`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found ({what})")
    check_size(path, pin.size, f"{what}: {path}")
    if _stamp_matches(path, pin):
        log.info("%s: verified earlier (%s), size and mtime unchanged: not hashed again", path,
                 pin.algo)
        return False
    log.info("%s: checking its %s (%d bytes)", path, pin.algo, path.stat().st_size)
    actual = file_digest(path, pin.algo)
    if actual != pin.digest:
        stamp_path(path).unlink(missing_ok=True)
        raise ChecksumError(f"{what}: {path} has {pin.algo} {actual}, but the pin is "
                            f"{pin.digest} ({'published checksum' if pin.by == PUBLISHER else USER_PIN_NOTE})")
    record_verified(path, pin)
    return True

"""Checksummed, resumable downloads and archive extraction that cannot write outside its target.

A reproduction is only as good as its inputs: every file is verified against a pinned digest
before anything reads it, and a corrupt or tampered file never reaches its final name. Downloads
of tens of gigabytes (COCO images, bottom-up features) break midway, so a transfer continues from
``<dest>.part`` with an HTTP ``Range`` request instead of starting over. Archives come from the
internet, so :func:`safe_extract` checks every member before it writes a single byte.

Standard library (urllib, zipfile, tarfile) plus tqdm only, so it runs on bare cluster nodes.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

log = logging.getLogger(__name__)

_HEX = {"sha256": 64, "md5": 32}
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class DownloadError(RuntimeError):
    """A download failed for good (bad status, retries exhausted)."""


class ChecksumError(DownloadError):
    """Downloaded bytes do not match the pinned digest."""


class UnsafeArchiveError(ValueError):
    """An archive member would land outside the extraction target (or is not a plain file)."""


@dataclass(frozen=True)
class DownloadSpec:
    """One file to fetch. ``sha256`` is a hex SHA-256, or ``"md5:<hex>"`` / ``"sha256:<hex>"``
    for files whose publishers only give an MD5. ``dest`` may instead be passed to
    :func:`download`; ``extract_to`` unpacks the verified archive there with :func:`safe_extract`."""

    url: str
    sha256: str
    dest: str | os.PathLike | None = None
    extract_to: str | os.PathLike | None = None

    def __post_init__(self) -> None:
        parse_checksum(self.sha256, self.url)


@dataclass(frozen=True)
class DownloadConfig:
    """``attempts`` tries per file, waiting ``base_delay * 2**k`` (capped at ``max_delay``)
    seconds after the k-th failure; ``timeout`` is per socket operation."""

    attempts: int = 5
    base_delay: float = 2.0
    max_delay: float = 60.0
    timeout: float = 60.0
    chunk_size: int = 1 << 20
    progress: bool = True


def parse_checksum(checksum: str, url: str = "<url>") -> tuple[str, str]:
    """``"md5:ab.."`` -> ``("md5", "ab..")``; a bare hex string is SHA-256."""
    if not isinstance(checksum, str) or not checksum:
        raise ValueError(f"{url}: checksum missing; pin it with the output of `sha256sum FILE`")
    algo, sep, digest = checksum.partition(":")
    if not sep:
        algo, digest = "sha256", checksum
    algo, digest = algo.lower(), digest.lower()
    if algo not in _HEX:
        raise ValueError(f"{url}: checksum {checksum!r}: unknown algorithm {algo!r}; "
                         f"use one of {sorted(_HEX)}")
    if len(digest) != _HEX[algo] or not re.fullmatch(r"[0-9a-f]+", digest):
        raise ValueError(f"{url}: checksum {checksum!r} is not a {_HEX[algo]}-digit hex {algo}")
    return algo, digest


def file_digest(path: str | os.PathLike, algo: str = "sha256", chunk_size: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks (archives are far larger than memory)."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def download(spec: DownloadSpec, dest: str | os.PathLike | None = None,
             cfg: DownloadConfig | None = None) -> Path:
    """Fetch ``spec.url`` to ``dest`` (default ``spec.dest``), verified, then extract if asked.

    A ``dest`` already holding the right bytes is kept without touching the network. Otherwise
    bytes go to ``dest.part`` (continued with ``Range`` after a broken transfer, retried with
    exponential backoff), are verified, and only then renamed to ``dest``.
    """
    cfg = cfg or DownloadConfig()
    if dest is None:
        dest = spec.dest
    if dest is None:
        raise ValueError(f"{spec.url}: no destination; set DownloadSpec.dest or pass dest=")
    dest = Path(dest)
    algo, expected = parse_checksum(spec.sha256, spec.url)
    if dest.exists():
        if file_digest(dest, algo, cfg.chunk_size) == expected:
            log.info("%s: already present with the pinned %s, not downloading", dest, algo)
            _maybe_extract(spec, dest)
            return dest
        log.warning("%s: present but its %s differs from the pin; downloading again", dest, algo)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    _fetch_with_retries(spec.url, part, cfg)
    actual = file_digest(part, algo, cfg.chunk_size)
    if actual != expected:
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"{spec.url}: {algo} mismatch: expected {expected}, got {actual}. The partial file "
            f"was deleted. If the publisher changed the file on purpose, verify it from a trusted "
            f"source and update the pinned checksum; otherwise retry (the transfer was corrupt).")
    os.replace(part, dest)
    log.info("%s -> %s (%s verified)", spec.url, dest, algo)
    _maybe_extract(spec, dest)
    return dest


def _maybe_extract(spec: DownloadSpec, archive: Path) -> None:
    if spec.extract_to is not None:
        safe_extract(archive, spec.extract_to)


def _fetch_with_retries(url: str, part: Path, cfg: DownloadConfig) -> None:
    if cfg.attempts < 1:
        raise ValueError(f"DownloadConfig.attempts must be >= 1, got {cfg.attempts}")
    last: Exception | None = None
    for attempt in range(cfg.attempts):
        if attempt:
            delay = min(cfg.max_delay, cfg.base_delay * 2 ** (attempt - 1))
            log.warning("%s: attempt %d/%d failed (%s); retrying in %.1f s", url, attempt,
                        cfg.attempts, last, delay)
            time.sleep(delay)
        try:
            _fetch_once(url, part, cfg)
            return
        except urllib.error.HTTPError as err:
            if err.code not in _RETRY_STATUS:
                raise DownloadError(f"{url}: HTTP {err.code} {err.reason}; check the URL in the "
                                    f"config (not retried)") from err
            last = err
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                TimeoutError, _Incomplete) as err:
            last = err
    kept = part.stat().st_size if part.exists() else 0
    raise DownloadError(f"{url}: giving up after {cfg.attempts} attempts; last error: {last}. "
                        f"Check the network or the URL and run again: the {kept} bytes in "
                        f"{part} are kept and the next run resumes from them.")


class _Incomplete(Exception):
    """The server closed the connection before sending everything it announced."""


def _fetch_once(url: str, part: Path, cfg: DownloadConfig) -> None:
    """One request: continue ``part`` from its size, or restart when the server will not."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "mia-repro-download/1", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=cfg.timeout)  # noqa: S310 (http/https by config)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            # Nothing left past offset: the .part is complete (the checksum decides) or longer
            # than the file (a stale .part of another version: start over).
            total = _total_from_content_range(err.headers.get("Content-Range"))
            err.close()
            if total is not None and total == offset:
                return
            log.warning("%s: %s (%d bytes) does not fit the remote file; restarting", url, part,
                        offset)
            part.unlink()
            return _fetch_once(url, part, cfg)
        raise
    with response:
        status = response.status
        if offset and status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range"), url)
            if start != offset:
                raise DownloadError(f"{url}: asked for bytes from {offset}, server sent from "
                                    f"{start}; delete {part} and run again")
            mode, expected_total = "ab", total
        else:
            if offset:
                log.warning("%s: server ignored the Range request (status %s); restarting",
                            url, status)
            offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            expected_total = int(length) if length is not None else None
        received = offset
        with open(part, mode) as f, tqdm(
                total=expected_total, initial=offset, unit="B", unit_scale=True,
                unit_divisor=1024, desc=part.name.removesuffix(".part"), file=sys.stderr,
                disable=not cfg.progress, leave=False) as bar:
            while True:
                try:
                    chunk = response.read(cfg.chunk_size)
                except http.client.IncompleteRead as err:
                    f.write(err.partial)
                    raise _Incomplete(f"connection closed after {received + len(err.partial)} "
                                      f"of {expected_total} bytes") from err
                if not chunk:
                    break
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if expected_total is not None and received < expected_total:
        raise _Incomplete(f"connection closed after {received} of {expected_total} bytes")


def _parse_content_range(value: str | None, url: str) -> tuple[int, int | None]:
    match = _CONTENT_RANGE.fullmatch((value or "").strip())
    if not match:
        raise DownloadError(f"{url}: HTTP 206 with unusable Content-Range {value!r}")
    total = match.group(3)
    return int(match.group(1)), None if total == "*" else int(total)


def _total_from_content_range(value: str | None) -> int | None:
    match = re.fullmatch(r"bytes \*/(\d+)", (value or "").strip())
    return int(match.group(1)) if match else None


# --------------------------------------------------------------------------- extraction


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike,
                 members: Sequence[str] | None = None) -> Path:
    """Unpack a zip or tar(.gz/.bz2/.xz) into ``target``, refusing it whole if any member escapes.

    Every member is checked before anything is written: absolute paths, ``..`` that climbs out,
    links pointing out (or members placed under a link), and special files are refused. The
    archive is unpacked into a temporary folder beside ``target`` and its top-level entries are
    then renamed into ``target`` (merging into existing folders), so an interrupted run leaves no
    half-written file under ``target``. ``members`` limits extraction to those names (and
    everything below them).
    """
    archive, target = Path(archive), Path(target)
    if zipfile.is_zipfile(archive):
        opener = _ZipArchive
    elif tarfile.is_tarfile(archive):
        opener = _TarArchive
    else:
        raise UnsafeArchiveError(f"{archive}: neither a zip nor a tar archive; delete it and "
                                 f"download it again")
    with opener(archive) as arc:
        entries = arc.entries()
        selected = _select(entries, members, archive)
        _check_members(selected, archive)
        target.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name or 'extract'}.", suffix=".tmp",
                                    dir=target.resolve().parent))
        try:
            arc.extract(selected, tmp)
            _move_into(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


@dataclass(frozen=True)
class _Entry:
    name: str  # as stored in the archive
    kind: str  # file, dir, symlink, hardlink, other
    link: str = ""  # link target for symlink/hardlink
    raw: object = None  # ZipInfo or TarInfo


def _select(entries: list[_Entry], members: Sequence[str] | None, archive: Path) -> list[_Entry]:
    if members is None:
        return entries
    wanted = [m.rstrip("/") for m in members]
    chosen = [e for e in entries
              if any(e.name.rstrip("/") == m or e.name.startswith(m + "/") for m in wanted)]
    found = {m for m in wanted for e in chosen
             if e.name.rstrip("/") == m or e.name.startswith(m + "/")}
    missing = [m for m in wanted if m not in found]
    if missing:
        names = ", ".join(e.name for e in entries[:10])
        raise KeyError(f"{archive}: members {missing} not in the archive (it holds {names}"
                       f"{', ...' if len(entries) > 10 else ''}); fix `members` in the config")
    return chosen


def _inside(path: str) -> bool:
    """Whether a relative POSIX path stays inside the root after resolving ``..``."""
    parts: list[str] = []
    for part in PurePosixPath(path).parts:
        if part == "..":
            if not parts:
                return False
            parts.pop()
        elif part not in (".", ""):
            parts.append(part)
    return True


def _norm(path: str) -> str:
    return os.path.normpath(path).replace(os.sep, "/")


def _check_members(entries: list[_Entry], archive: Path) -> None:
    links = {_norm(e.name) for e in entries if e.kind in ("symlink", "hardlink")}
    for e in entries:
        name = e.name.replace("\\", "/")
        why = None
        if not name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
            why = "absolute path"
        elif not _inside(name):
            why = "path climbs out of the target with '..'"
        elif e.kind == "other":
            why = "not a regular file, folder or link (device, fifo)"
        elif e.kind == "symlink" and (e.link.startswith("/") or not _inside(
                str(PurePosixPath(name).parent / e.link))):
            why = f"symlink to {e.link!r} points outside the target"
        elif e.kind == "hardlink" and (e.link.startswith("/") or not _inside(e.link)):
            why = f"hard link to {e.link!r} points outside the target"
        else:
            parents = PurePosixPath(_norm(name)).parents
            via = next((str(p) for p in parents if str(p) in links), None)
            if via is not None:
                why = f"placed under the link {via!r}, which could lead outside the target"
        if why:
            raise UnsafeArchiveError(f"{archive}: member {e.name!r}: {why}; refusing to extract "
                                     f"anything from this archive. Download it from a trusted "
                                     f"source (and check its pinned checksum).")


def _move_into(src: Path, dest: Path) -> None:
    """Rename each entry of ``src`` into ``dest``; folders that exist on both sides are merged."""
    for child in sorted(src.iterdir()):
        out = dest / child.name
        if child.is_dir() and not child.is_symlink() and out.is_dir() and not out.is_symlink():
            _move_into(child, out)
        else:
            if out.is_dir() and not out.is_symlink():
                shutil.rmtree(out)
            elif out.is_symlink() or (out.exists() and child.is_dir()):
                out.unlink()
            os.replace(child, out)


class _ZipArchive:
    def __init__(self, path: Path) -> None:
        self.zf = zipfile.ZipFile(path)

    def __enter__(self) -> _ZipArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.zf.close()

    def entries(self) -> list[_Entry]:
        out = []
        for info in self.zf.infolist():
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                out.append(_Entry(info.filename, "symlink",
                                  self.zf.read(info).decode("utf-8", "replace"), info))
            else:
                out.append(_Entry(info.filename, "dir" if info.is_dir() else "file", "", info))
        return out

    def extract(self, entries: list[_Entry], tmp: Path) -> None:
        for e in entries:
            dest = tmp / _norm(e.name)
            if e.kind == "dir":
                dest.mkdir(parents=True, exist_ok=True)
            elif e.kind == "symlink":
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(e.link, dest)
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                with self.zf.open(e.raw) as src, open(dest, "wb") as out:  # type: ignore[arg-type]
                    shutil.copyfileobj(src, out, 1 << 20)


class _TarArchive:
    def __init__(self, path: Path) -> None:
        self.tf = tarfile.open(path)  # noqa: SIM115 (closed by __exit__)

    def __enter__(self) -> _TarArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.tf.close()

    def entries(self) -> list[_Entry]:
        out = []
        for info in self.tf.getmembers():
            if info.isreg():
                kind = "file"
            elif info.isdir():
                kind = "dir"
            elif info.issym():
                kind = "symlink"
            elif info.islnk():
                kind = "hardlink"
            else:
                kind = "other"
            out.append(_Entry(info.name, kind, info.linkname, info))
        return out

    def extract(self, entries: list[_Entry], tmp: Path) -> None:
        infos = [e.raw for e in entries]
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        self.tf.extractall(tmp, members=infos, **kwargs)  # type: ignore[arg-type]  # noqa: S202

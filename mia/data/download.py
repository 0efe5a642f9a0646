"""Checksummed, resumable downloads and archive extraction that cannot write outside its target.

A reproduction is only as good as its inputs: every file is verified against a pinned digest
before anything reads it, and a corrupt or tampered file never reaches its final name. Downloads
of tens of gigabytes (COCO images, bottom-up features) break midway, so a transfer continues from
``<dest>.part`` with an HTTP ``Range`` request instead of starting over. Archives come from the
internet, so :func:`safe_extract` checks every member before it writes a single byte.

Standard library (urllib, zipfile, tarfile) plus tqdm only, so it runs on bare cluster nodes.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import http.client
import logging
import lzma
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from mia.progress import Progress

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


class DiskFullError(DownloadError):
    """The disk filled up: no other source can help, the kept bytes wait for the next run."""


class SizeMismatchError(ChecksumError):
    """The file has not the pinned number of bytes (an error page, a cut or another file): it
    is refused at once, without reading it to compute its digest."""


@dataclass(frozen=True)
class DownloadSpec:
    """One file to fetch. ``sha256`` is a hex SHA-256, or ``"md5:<hex>"`` / ``"sha256:<hex>"``
    for files whose publishers only give an MD5. ``mirrors`` are further URLs known to serve the
    same bytes, tried in turn after ``url``, each checked against the one pin. ``size`` (bytes,
    when published) is checked before any hashing. ``dest`` may instead be passed to
    :func:`download`; ``extract_to`` unpacks the verified archive there with :func:`safe_extract`."""

    url: str
    sha256: str
    dest: str | os.PathLike | None = None
    extract_to: str | os.PathLike | None = None
    mirrors: tuple[str, ...] = ()
    size: int | None = None

    def __post_init__(self) -> None:
        parse_checksum(self.sha256, self.url)
        object.__setattr__(self, "mirrors", tuple(self.mirrors))
        if self.size is not None and (isinstance(self.size, bool) or int(self.size) < 0):
            raise ValueError(f"{self.url}: size {self.size!r} is not a byte count")

    @property
    def urls(self) -> tuple[str, ...]:
        """Every source, in the order they are tried."""
        return (self.url, *self.mirrors)


@dataclass(frozen=True)
class DownloadConfig:
    """``attempts`` tries per file, waiting ``base_delay * 2**k`` (capped at ``max_delay``)
    seconds after the k-th failure; ``timeout`` is per socket operation. ``progress``: the bar
    of :class:`mia.progress.Progress` (log lines of bytes, rate and ETA are written always)."""

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


def check_size(path: str | os.PathLike, size: int | None, what: str) -> None:
    """Refuse ``path`` at once when ``size`` is pinned and the file has another length: an HTML
    error page or a cut transfer is caught before gigabytes are hashed."""
    if size is None:
        return
    actual = Path(path).stat().st_size
    if actual != size:
        raise SizeMismatchError(
            f"{what}: {actual} bytes, but the pinned size is {size} bytes (an error page, a cut "
            f"transfer or another file); not hashed")


def download(spec: DownloadSpec, dest: str | os.PathLike | None = None,
             cfg: DownloadConfig | None = None) -> Path:
    """Fetch ``spec.url`` (then each of ``spec.mirrors``) to ``dest`` (default ``spec.dest``),
    verified, then extract if asked.

    A ``dest`` already holding the right bytes is kept without touching the network. Otherwise
    bytes go to ``dest.part`` (continued with ``Range`` after a broken transfer, retried with
    exponential backoff), are checked for size and digest, and only then renamed to ``dest``.
    A source that fails for good (a dead URL, bytes that do not match the pin) hands over to the
    next one; the log says which source served the file. When every source fails, one
    :class:`DownloadError` names each source and why.
    """
    cfg = cfg or DownloadConfig()
    if dest is None:
        dest = spec.dest
    if dest is None:
        raise ValueError(f"{spec.url}: no destination; set DownloadSpec.dest or pass dest=")
    dest = Path(dest)
    algo, expected = parse_checksum(spec.sha256, spec.url)
    if dest.exists():
        if (spec.size is None or dest.stat().st_size == spec.size) and \
                file_digest(dest, algo, cfg.chunk_size) == expected:
            log.info("%s: already present with the pinned %s, not downloading", dest, algo)
            _maybe_extract(spec, dest)
            return dest
        log.warning("%s: present but not the pinned file (%s or size differs); downloading "
                    "again", dest, algo)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures: list[str] = []
    for number, url in enumerate(spec.urls, 1):
        try:
            _fetch_verified(url, part, algo, expected, spec.size, cfg)
        except DownloadError as err:
            if len(spec.urls) == 1 or isinstance(err, DiskFullError):
                raise
            failures.append(f"{url}: {err}")
            log.warning("source %d/%d failed: %s", number, len(spec.urls), err)
            continue
        os.replace(part, dest)
        if number > 1:
            log.info("%s served by mirror %d/%d %s (%s verified)", dest, number,
                     len(spec.urls), url, algo)
        else:
            log.info("%s served by %s (%s verified)", dest, url, algo)
        _maybe_extract(spec, dest)
        return dest
    kept = _kept_bytes(part)
    resume = (f" The {kept} bytes in {part} are kept; the next run resumes from them." if kept
              else "")
    raise DownloadError(
        f"{dest.name}: none of its {len(spec.urls)} sources served the pinned file:\n  "
        + "\n  ".join(failures) + f"\n{resume}".rstrip())


def _kept_bytes(part: Path) -> int:
    """Bytes a ``.part`` holds for the next run; an empty one is removed (nothing to resume)."""
    if not part.exists():
        return 0
    kept = part.stat().st_size
    if not kept:
        part.unlink()
    return kept


def _fetch_verified(url: str, part: Path, algo: str, expected: str, size: int | None,
                    cfg: DownloadConfig) -> None:
    """Fill ``part`` from ``url`` and check it against the pin; on a mismatch ``part`` is gone
    and :class:`ChecksumError` (a :class:`DownloadError`) says why."""
    resumed = _fetch_with_retries(url, part, cfg)
    actual = _checked_digest(part, algo, size, cfg, url)
    if actual != expected and resumed:
        # Bytes kept from an earlier transfer (a .part of another version, a disk error) spoil
        # the result however good the rest is: they must not be kept, so start over once.
        log.warning("%s: %s resumed from earlier bytes fails its %s check; those bytes were "
                    "wrong: downloading again from the start", url, part, algo)
        part.unlink(missing_ok=True)
        _fetch_with_retries(url, part, cfg)
        actual = _checked_digest(part, algo, size, cfg, url)
    if actual is None:
        got = part.stat().st_size
        part.unlink(missing_ok=True)
        raise SizeMismatchError(
            f"{url}: served {got} bytes, but the pinned size is {size} bytes (an error page, a "
            f"cut transfer or another file); not hashed, the partial file was deleted")
    if actual != expected:
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"{url}: {algo} mismatch: expected {expected}, got {actual}. The partial file "
            f"was deleted. If the publisher changed the file on purpose, verify it from a trusted "
            f"source and update the pinned checksum; otherwise retry (the transfer was corrupt).")


def _checked_digest(part: Path, algo: str, size: int | None, cfg: DownloadConfig,
                    url: str) -> str | None:
    """The digest of ``part``, or None (not hashed) when its size is not the pinned size."""
    if size is not None and part.stat().st_size != size:
        log.warning("%s: received %d bytes, the pinned size is %d: not the pinned file, "
                    "not hashed", url, part.stat().st_size, size)
        return None
    return file_digest(part, algo, cfg.chunk_size)


def _maybe_extract(spec: DownloadSpec, archive: Path) -> None:
    if spec.extract_to is not None:
        safe_extract(archive, spec.extract_to)


def _fetch_with_retries(url: str, part: Path, cfg: DownloadConfig) -> bool:
    """Fill ``part`` with the whole remote file; whether any bytes were kept from before
    (a leftover ``.part`` or an attempt broken midway), which the checksum then judges."""
    if cfg.attempts < 1:
        raise ValueError(f"DownloadConfig.attempts must be >= 1, got {cfg.attempts}")
    last: Exception | None = None
    resumed = False
    for attempt in range(cfg.attempts):
        if attempt:
            delay = min(cfg.max_delay, cfg.base_delay * 2 ** (attempt - 1))
            log.warning("%s: attempt %d/%d failed (%s); retrying in %.1f s", url, attempt,
                        cfg.attempts, last, delay)
            time.sleep(delay)
        try:
            resumed |= _fetch_once(url, part, cfg)
            return resumed
        except urllib.error.HTTPError as err:
            if 300 <= err.code < 400:
                raise DownloadError(f"{url}: too many redirects (a redirect loop; the last was "
                                    f"HTTP {err.code} to {err.headers.get('Location')!r}); "
                                    f"check the URL in the config (not retried)") from err
            if err.code not in _RETRY_STATUS:
                raise DownloadError(f"{url}: HTTP {err.code} {err.reason}; check the URL in the "
                                    f"config (not retried)") from err
            last = err
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                TimeoutError, _Incomplete) as err:
            last = err
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            kept = part.stat().st_size if part.exists() else 0
            raise DiskFullError(f"{url}: no space left on the disk of {part} ({err.strerror}) "
                                f"after {kept} bytes; nothing was written to {part.name[:-5]}. "
                                f"Free space and run again: the download resumes from the "
                                f"kept bytes") from err
    kept = _kept_bytes(part)
    resume = (f"the {kept} bytes in {part} are kept and the next run resumes from them" if kept
              else "no bytes were received, so there is nothing to resume")
    raise DownloadError(f"{url}: giving up after {cfg.attempts} attempts; last error: {last}. "
                        f"Check the network or the URL and run again: {resume}.")


class _Incomplete(Exception):
    """The server closed the connection before sending everything it announced."""


def _fetch_once(url: str, part: Path, cfg: DownloadConfig) -> bool:
    """One request: continue ``part`` from its size, or restart when the server will not.
    Returns whether earlier bytes of ``part`` were kept."""
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
                return True
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
        with open(part, mode) as f, Progress(
                f"download {part.name.removesuffix('.part')}", expected_total, unit="MB",
                scale=2**20, start=offset, logger=log, bar=cfg.progress) as bar:
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
    return mode == "ab"


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


class CorruptArchiveError(UnsafeArchiveError):
    """The archive cannot be read to its end (truncated, bit-flipped); nothing was extracted."""


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike,
                 members: Sequence[str] | None = None) -> Path:
    """Unpack a zip or tar(.gz/.bz2/.xz) into ``target``, refusing it whole if any member escapes.

    Every member is checked before anything is written. The whole archive is refused for: an
    absolute name or a ``..`` in a name; a device, fifo or other special file; a name that
    appears twice (a later copy could replace a checked member by a link); a member placed under
    a link or a file; a symbolic link whose target leaves ``target``, or passes through a link
    (of the archive or already in ``target``) on its way: a chain ``l2 -> d/..``,
    ``l1 -> l2/..`` climbs one level per link, which no look at one link's own text can see; a
    hard link to anything but a regular file of the archive. Links that stay inside and point
    at real folders and files are kept: the paper's archives (COCO images and annotations, VQA,
    Karpathy's split, GloVe, bottom-up features) are plain files and folders, but archives made
    by hand with ``tar`` often hold such links.

    The archive is unpacked into a temporary folder beside ``target``; there every link is
    resolved on disk and must stay inside (a second, independent check), and only then are its
    top-level entries renamed into ``target`` (merging into existing folders), so a refused or
    interrupted run leaves nothing under ``target`` and nothing beside it. ``members`` limits
    extraction to those names (and everything below them).
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise FileNotFoundError(f"{archive}: archive not found; download it first")
    if zipfile.is_zipfile(archive):
        opener: type[_ZipArchive] | type[_TarArchive] = _ZipArchive
    elif tarfile.is_tarfile(archive):
        opener = _TarArchive
    else:
        raise UnsafeArchiveError(f"{archive}: neither a zip nor a tar archive; delete it and "
                                 f"download it again")
    made: list[Path] = []
    try:
        with opener(archive) as arc:
            entries = arc.entries()
            selected = _select(entries, members, archive)
            _check_members(selected, archive, target)
            _check_space(selected, archive, target)
            made = _make_folders(target)
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name or 'extract'}.", suffix=".tmp",
                                        dir=target.resolve().parent))
            try:
                arc.extract(selected, tmp)
                _audit(tmp, archive)
                _move_into(tmp, target)
                made = []
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
                for folder in reversed(made):  # refused: not even an empty target is left
                    with contextlib.suppress(OSError):
                        folder.rmdir()
    except tarfile.FilterError as err:
        raise UnsafeArchiveError(f"{archive}: {err}; refusing to extract it") from err
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError,
            gzip.BadGzipFile) as err:
        raise CorruptArchiveError(f"{archive}: the archive is damaged ({type(err).__name__}: "
                                  f"{err}); nothing was extracted. Delete it and download it "
                                  f"again") from err
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(err.errno, f"no space left extracting {archive} into {target} "
                                     f"({err.strerror}); nothing was extracted. Free space (or "
                                     f"point data.root elsewhere) and run again") from err
        raise
    return target


def _make_folders(target: Path) -> list[Path]:
    """``mkdir -p target``; the folders it created, outermost first."""
    missing = [p for p in (target, *target.parents) if not p.exists()]
    target.mkdir(parents=True, exist_ok=True)
    return list(reversed(missing))


@dataclass(frozen=True)
class _Entry:
    name: str  # as stored in the archive
    kind: str  # file, dir, symlink, hardlink, other
    link: str = ""  # link target for symlink/hardlink
    raw: object = None  # ZipInfo or TarInfo
    size: int = 0  # bytes once extracted (regular files)


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


def _key(name: str) -> str:
    """A member name as a relative POSIX path without ``.`` parts (``""`` is the root)."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    return "/".join(parts)


def _name_problem(name: str, kind: str) -> str | None:
    posix = name.replace("\\", "/")
    if not posix or posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        return "absolute path"
    if ".." in posix.split("/"):
        return "'..' in the name: it climbs out of the target (or through a link)"
    if kind == "other":
        return "not a regular file, folder or link (device, fifo)"
    if not _key(name) and kind != "dir":
        return "a link or file named like the target folder itself"
    return None


def _walk(start: list[str], target: str, links: set[str], on_disk: Path) -> str | None:
    """Follow ``target`` from the folder ``start`` one part at a time; the problem, or None.

    Refuses climbing above the root and passing through any link: a link of the archive or one
    already under ``on_disk`` (an earlier archive merged into the same folder).
    """
    stack = list(start)
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return "points outside the target"
            stack.pop()
            continue
        stack.append(part)
        here = "/".join(stack)
        if here in links or (on_disk / here).is_symlink():
            return (f"passes through the link {here!r}; links to links are refused (a chain "
                    f"of them can climb out one '..' at a time)")
    return None


def _check_members(entries: list[_Entry], archive: Path, target: Path) -> None:
    kinds: dict[str, str] = {}
    for e in entries:
        why = _name_problem(e.name, e.kind)
        key = _key(e.name)
        if why is None and key in kinds and (kinds[key] != "dir" or e.kind != "dir"):
            why = "appears twice in the archive (a later copy could replace a checked member)"
        if why:
            raise _refused(archive, e, why)
        kinds.setdefault(key, e.kind)
    links = {k for k, kind in kinds.items() if kind in ("symlink", "hardlink")}
    for e in entries:
        key = _key(e.name)
        parents = [str(p) for p in PurePosixPath(key).parents if str(p) != "."]
        below = next((p for p in reversed(parents) if kinds.get(p, "dir") != "dir"), None)
        why = None
        if below is not None:
            what = "file" if kinds[below] == "file" else "link"
            why = f"placed under the {what} {below!r}, which could lead outside the target"
        elif e.kind == "symlink":
            why = _link_problem(e.link, parents[0] if parents else "", links, target)
        elif e.kind == "hardlink":
            why = _link_problem(e.link, "", links, target)
            if why is None and kinds.get(_key(e.link)) != "file":
                why = "is not a regular file of this archive"
        if why:
            what = "symlink" if e.kind == "symlink" else "hard link"
            raise _refused(archive, e, why if e.kind not in ("symlink", "hardlink")
                           else f"{what} to {e.link!r} {why}")


def _link_problem(link: str, folder: str, links: set[str], target: Path) -> str | None:
    if not link:
        return "has an empty target"
    if link.startswith("/") or link.startswith("\\") or re.match(r"^[A-Za-z]:", link):
        return "points outside the target (absolute)"
    return _walk(folder.split("/") if folder else [], link.replace("\\", "/"), links, target)


def _refused(archive: Path, e: _Entry, why: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"{archive}: member {e.name!r}: {why}; refusing to extract "
                              f"anything from this archive. Download it from a trusted "
                              f"source (and check its pinned checksum).")


def _check_space(entries: list[_Entry], archive: Path, target: Path) -> None:
    needed = sum(e.size for e in entries if e.kind == "file")
    existing = next(p for p in (target, *target.absolute().parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise OSError(errno.ENOSPC, f"it unpacks to {needed} bytes, {free} are free there")


def _audit(tmp: Path, archive: Path) -> None:
    """Second check, on disk: every extracted link resolves inside ``tmp``; no special files."""
    root = os.path.realpath(tmp)
    for folder, dirs, files in os.walk(tmp):
        for name in dirs + files:
            path = os.path.join(folder, name)
            mode = os.lstat(path).st_mode
            rel = os.path.relpath(path, tmp)
            if stat.S_ISLNK(mode):
                real = os.path.realpath(path)
                if real != root and not real.startswith(root + os.sep):
                    raise UnsafeArchiveError(
                        f"{archive}: member {rel!r} resolves outside the target once "
                        f"extracted; refusing to extract anything from this archive")
            elif not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise UnsafeArchiveError(f"{archive}: member {rel!r} is not a regular file, "
                                         f"folder or link; refusing to extract this archive")


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


#: Longest symlink target read from a zip (the target is the member's content: a "link" of
#: gigabytes is a zip bomb, not a link).
_MAX_LINK_BYTES = 4096


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
            fmt = stat.S_IFMT(info.external_attr >> 16)
            if fmt == stat.S_IFLNK:
                if info.file_size > _MAX_LINK_BYTES:
                    out.append(_Entry(info.filename, "other", "", info))
                    continue
                out.append(_Entry(info.filename, "symlink",
                                  self.zf.read(info).decode("utf-8", "replace"), info))
            elif info.is_dir() or fmt == stat.S_IFDIR:
                out.append(_Entry(info.filename, "dir", "", info))
            elif fmt in (0, stat.S_IFREG):  # 0: made on a system without Unix modes
                out.append(_Entry(info.filename, "file", "", info, info.file_size))
            else:
                out.append(_Entry(info.filename, "other", "", info))
        return out

    def extract(self, entries: list[_Entry], tmp: Path) -> None:
        for e in entries:
            dest = tmp / _key(e.name)
            if e.kind == "dir":
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            if e.kind == "symlink":
                os.symlink(e.link, dest)
                continue
            # O_EXCL | O_NOFOLLOW: never write through something already there (a link).
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with self.zf.open(e.raw) as src, os.fdopen(fd, "wb") as out:  # type: ignore[arg-type]
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
            out.append(_Entry(info.name, kind, info.linkname, info,
                              info.size if kind == "file" else 0))
        return out

    def extract(self, entries: list[_Entry], tmp: Path) -> None:
        infos = [e.raw for e in entries]
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        self.tf.extractall(tmp, members=infos, **kwargs)  # type: ignore[arg-type]  # noqa: S202

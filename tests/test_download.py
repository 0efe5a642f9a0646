"""mia.data.download against a local HTTP server that honours (or breaks) Range requests.

The archives served are real zips and tar.gz files built here; the server records every request
so the tests can assert what the client asked for (resume offsets, no request at all).
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import os
import random
import tarfile
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import mia.data.download as dl
from mia.data.download import (
    ChecksumError,
    DownloadConfig,
    DownloadError,
    DownloadSpec,
    UnsafeArchiveError,
    download,
    safe_extract,
)

pytestmark = pytest.mark.network_local

FAST = DownloadConfig(attempts=3, base_delay=0.01, max_delay=0.05, timeout=10,
                      chunk_size=8192, progress=False)


# --------------------------------------------------------------------------- the server


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    cut_after: int | None = None  # close the connection after this many body bytes ...
    cut_times: int = 0  # ... on this many requests
    ignore_range: bool = False
    status: int | None = None  # answer every request with this error status
    status_times: int | None = None  # ... only on this many requests (None: all of them)
    length_delta: int = 0  # announce Content-Length this many bytes off the real body
    redirect_loop: bool = False  # every request is redirected to another path, forever
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        range_header = self.headers.get("Range")
        with state.lock:
            state.requests.append((self.path, range_header))
            cut = state.cut_after if state.cut_times > 0 else None
            if cut is not None:
                state.cut_times -= 1
            status = state.status if state.status_times is None or state.status_times > 0 \
                else None
            if state.status_times:
                state.status_times -= 1
        if status is not None:
            self.send_error(status)
            return
        if state.redirect_loop:
            self.send_response(302)
            self.send_header("Location", f"/hop{len(state.requests)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = state.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start, code = 0, 200
        if range_header and not state.ignore_range:
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            code = 206
        body = data[start:]
        self.send_response(code)
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body) + state.length_delta))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = ServerState()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    try:
        yield httpd.state, f"http://127.0.0.1:{httpd.server_address[1]}"  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


# --------------------------------------------------------------------------- archives


def _payload() -> dict[str, bytes]:
    rng = random.Random(0)
    return {
        "annotations/captions.json": b'{"images": [], "annotations": []}',
        "annotations/readme.txt": b"demo archive\n" * 100,
        "annotations/blob.bin": bytes(rng.getrandbits(8) for _ in range(150_000)),
    }


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _tar(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tf.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tf.addfile(info, io.BytesIO(m[1]))
    return buf.getvalue()


def _link(name: str, target: str, hard: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- downloads


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_download_verifies_and_extracts_real_archives(server, tmp_path, kind):
    state, base = server
    files = _payload()
    data = _zip(files) if kind == "zip" else _tar(list(files.items()))
    state.files[f"/data.{kind}"] = data
    spec = DownloadSpec(f"{base}/data.{kind}", _sha(data), tmp_path / f"dl/data.{kind}",
                        extract_to=tmp_path / "raw")
    out = download(spec, cfg=FAST)
    assert out.read_bytes() == data
    assert not out.with_name(out.name + ".part").exists()
    assert _tree(tmp_path / "raw") == files
    assert {p.name for p in tmp_path.iterdir()} == {"dl", "raw"}  # no temp folder left beside


def test_md5_checksum_accepted(server, tmp_path):
    state, base = server
    state.files["/f.bin"] = b"x" * 5000
    spec = DownloadSpec(f"{base}/f.bin", "md5:" + hashlib.md5(b"x" * 5000).hexdigest())
    assert download(spec, tmp_path / "f.bin", FAST).read_bytes() == b"x" * 5000


def test_interrupted_transfer_resumes_with_range(server, tmp_path):
    state, base = server
    data = _zip(_payload())
    state.files["/a.zip"] = data
    state.cut_after, state.cut_times = 40_000, 1
    out = download(DownloadSpec(f"{base}/a.zip", _sha(data)), tmp_path / "a.zip", FAST)
    assert out.read_bytes() == data
    assert state.requests == [("/a.zip", None), ("/a.zip", "bytes=40000-")]


def test_leftover_part_file_is_continued(server, tmp_path):
    state, base = server
    data = _zip(_payload())
    state.files["/a.zip"] = data
    (tmp_path / "a.zip.part").write_bytes(data[:12_345])  # a previous run killed mid-transfer
    download(DownloadSpec(f"{base}/a.zip", _sha(data)), tmp_path / "a.zip", FAST)
    assert state.requests == [("/a.zip", "bytes=12345-")]
    assert (tmp_path / "a.zip").read_bytes() == data


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    state, base = server
    data = _zip(_payload())
    state.files["/a.zip"] = data
    state.ignore_range = True
    # A .part whose bytes would corrupt the result if the full 200 body were appended to it.
    (tmp_path / "a.zip.part").write_bytes(b"garbage" * 1000)
    download(DownloadSpec(f"{base}/a.zip", _sha(data)), tmp_path / "a.zip", FAST)
    assert state.requests == [("/a.zip", "bytes=7000-")]
    assert (tmp_path / "a.zip").read_bytes() == data


def test_416_on_complete_part_verifies_without_refetching(server, tmp_path):
    state, base = server
    data = b"0123456789" * 1000
    state.files["/f"] = data
    (tmp_path / "f.part").write_bytes(data)
    download(DownloadSpec(f"{base}/f", _sha(data)), tmp_path / "f", FAST)
    assert state.requests == [("/f", "bytes=10000-")]
    assert (tmp_path / "f").read_bytes() == data


def test_416_on_overlong_part_restarts(server, tmp_path):
    state, base = server
    data = b"0123456789" * 100
    state.files["/f"] = data
    (tmp_path / "f.part").write_bytes(b"z" * 5000)
    download(DownloadSpec(f"{base}/f", _sha(data)), tmp_path / "f", FAST)
    assert state.requests == [("/f", "bytes=5000-"), ("/f", None)]
    assert (tmp_path / "f").read_bytes() == data


def test_wrong_checksum_refused_and_nothing_left(server, tmp_path):
    state, base = server
    data = b"tampered content" * 100
    state.files["/f.zip"] = data
    pinned = _sha(b"the real content")
    url = f"{base}/f.zip"
    with pytest.raises(ChecksumError) as err:
        download(DownloadSpec(url, pinned), tmp_path / "f.zip", FAST)
    msg = str(err.value)
    assert url in msg and pinned in msg and _sha(data) in msg and "checksum" in msg
    assert list(tmp_path.iterdir()) == []


def test_retries_exhausted_gives_clear_error(server, tmp_path):
    state, base = server
    data = b"a" * 50_000
    state.files["/f"] = data
    state.cut_after, state.cut_times = 0, 100  # every attempt dies before a byte arrives
    url = f"{base}/f"
    with pytest.raises(DownloadError, match="giving up after 3 attempts") as err:
        download(DownloadSpec(url, _sha(data)), tmp_path / "f", FAST)
    assert url in str(err.value)
    assert len(state.requests) == 3
    assert not (tmp_path / "f").exists()


def test_server_errors_retried_but_404_is_not(server, tmp_path):
    state, base = server
    state.status = 503
    with pytest.raises(DownloadError, match="3 attempts"):
        download(DownloadSpec(f"{base}/f", _sha(b"")), tmp_path / "f", FAST)
    assert len(state.requests) == 3
    state.status, state.requests[:] = None, []
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(DownloadSpec(f"{base}/missing", _sha(b"")), tmp_path / "g", FAST)
    assert len(state.requests) == 1


def test_present_file_with_right_checksum_not_downloaded(server, tmp_path):
    state, base = server
    data = b"already here" * 10
    state.files["/f"] = data
    (tmp_path / "f").write_bytes(data)
    download(DownloadSpec(f"{base}/f", _sha(data)), tmp_path / "f", FAST)
    assert state.requests == []
    (tmp_path / "f").write_bytes(b"stale version")  # wrong bytes: fetched again
    download(DownloadSpec(f"{base}/f", _sha(data)), tmp_path / "f", FAST)
    assert len(state.requests) == 1 and (tmp_path / "f").read_bytes() == data


def test_bad_checksum_spec_rejected_early():
    with pytest.raises(ValueError, match="64-digit hex sha256"):
        DownloadSpec("http://x/y", "abc")
    with pytest.raises(ValueError, match="unknown algorithm"):
        DownloadSpec("http://x/y", "sha1:" + "0" * 40)


# --------------------------------------------------------------------------- extraction


def _assert_refused(tmp_path: Path, archive_bytes: bytes, suffix: str, match: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    archive = work / f"evil.{suffix}"
    archive.write_bytes(archive_bytes)
    target = work / "deep" / "target"
    with pytest.raises(UnsafeArchiveError, match=match):
        safe_extract(archive, target)
    # Nothing anywhere: not in the target, not beside it, not above it (where ../ leads).
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert written == ["work", f"work/evil.{suffix}"]


@pytest.mark.parametrize("name", ["../evil.txt", "deep/../../../evil.txt", "/tmp/evil.txt"])
def test_zip_with_escaping_member_refused(tmp_path, name):
    # The harmless member comes first: a checker that extracts as it goes would write it.
    data = _zip({"ok.txt": b"fine", name: b"pwned"})
    _assert_refused(tmp_path, data, "zip", "refusing to extract")


def test_zip_with_escaping_symlink_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ok.txt", b"fine")
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777 << 16)  # S_IFLNK
        zf.writestr(info, "../../outside")
    _assert_refused(tmp_path, buf.getvalue(), "zip", "points outside")


@pytest.mark.parametrize("members, match", [
    ([("ok.txt", b"fine"), ("/abs/evil.txt", b"pwned")], "absolute path"),
    ([("ok.txt", b"fine"), ("../evil.txt", b"pwned")], "climbs out"),
    ([("ok.txt", b"fine"), _link("link", "../../../etc")], "points outside"),
    ([("ok.txt", b"fine"), _link("link", "/etc/passwd")], "points outside"),
    ([("ok.txt", b"fine"), _link("hard", "../outside.txt", hard=True)], "hard link"),
    ([_link("sub", "."), ("sub/evil.txt", b"x")], "placed under the link"),
])
def test_tar_with_escaping_member_refused(tmp_path, members, match):
    _assert_refused(tmp_path, _tar(members), "tar.gz", match)


def test_tar_internal_links_allowed(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(_tar([("d/real.txt", b"content"), _link("d/soft", "real.txt"),
                              _link("d/hard", "d/real.txt", hard=True)]))
    safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out/d/soft").read_bytes() == b"content"
    assert (tmp_path / "out/d/hard").read_bytes() == b"content"


def test_extract_merges_into_existing_target_and_selects_members(tmp_path):
    """Two archives share `images/` (COCO train2014.zip and val2014.zip); Karpathy's zip is
    filtered down to one member."""
    (tmp_path / "t.zip").write_bytes(_zip({"train2014/a.jpg": b"A"}))
    (tmp_path / "v.zip").write_bytes(_zip({"val2014/b.jpg": b"B"}))
    (tmp_path / "k.zip").write_bytes(_zip({"dataset_coco.json": b"{}",
                                           "dataset_flickr8k.json": b"{}"}))
    safe_extract(tmp_path / "t.zip", tmp_path / "raw/images")
    safe_extract(tmp_path / "v.zip", tmp_path / "raw/images")
    safe_extract(tmp_path / "k.zip", tmp_path / "raw/karpathy", members=["dataset_coco.json"])
    assert _tree(tmp_path / "raw") == {"images/train2014/a.jpg": b"A", "images/val2014/b.jpg": b"B",
                                       "karpathy/dataset_coco.json": b"{}"}
    with pytest.raises(KeyError, match="not in the archive"):
        safe_extract(tmp_path / "k.zip", tmp_path / "raw/karpathy", members=["nope.json"])


def test_not_an_archive_refused(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"<html>login page</html>")
    with pytest.raises(UnsafeArchiveError, match="neither a zip nor a tar"):
        safe_extract(tmp_path / "x.zip", tmp_path / "out")
    assert os.listdir(tmp_path) == ["x.zip"]


def test_file_url_download_with_stale_part(tmp_path):
    """file:// (used by tests and mirrors on shared disks) has no Range: a .part is replaced."""
    src = tmp_path / "src.zip"
    data = _zip(_payload())
    src.write_bytes(data)
    (tmp_path / "out.zip.part").write_bytes(b"stale")
    out = download(DownloadSpec(src.as_uri(), _sha(data)), tmp_path / "out.zip", FAST)
    assert out.read_bytes() == data and not (tmp_path / "out.zip.part").exists()


# --------------------------------------------------------------------------- faults (RELIABILITY.md)


def test_leftover_part_with_wrong_bytes_restarts_instead_of_being_kept(server, tmp_path):
    """A .part from another version of the file (or damaged on disk): resuming from it gives
    a wrong file, which fails its checksum; the wrong bytes are dropped and the file is
    fetched whole, once."""
    state, base = server
    data = _zip(_payload())
    state.files["/a.zip"] = data
    (tmp_path / "a.zip.part").write_bytes(b"\x00" * 12_345)  # right length, wrong bytes
    out = download(DownloadSpec(f"{base}/a.zip", _sha(data)), tmp_path / "a.zip", FAST)
    assert out.read_bytes() == data and not (tmp_path / "a.zip.part").exists()
    assert state.requests == [("/a.zip", "bytes=12345-"), ("/a.zip", None)]


def test_complete_length_part_with_wrong_bytes_restarts(server, tmp_path):
    state, base = server
    data = b"0123456789" * 1000
    state.files["/f"] = data
    (tmp_path / "f.part").write_bytes(b"9" * len(data))  # the server answers 416: nothing left
    download(DownloadSpec(f"{base}/f", _sha(data)), tmp_path / "f", FAST)
    assert state.requests == [("/f", "bytes=10000-"), ("/f", None)]
    assert (tmp_path / "f").read_bytes() == data


def test_wrong_part_and_wrong_server_bytes_fail_after_one_restart(server, tmp_path):
    state, base = server
    state.files["/f"] = b"served" * 1000
    (tmp_path / "f.part").write_bytes(b"old" * 100)
    pinned = _sha(b"what the publisher released")
    with pytest.raises(ChecksumError) as err:
        download(DownloadSpec(f"{base}/f", pinned), tmp_path / "f", FAST)
    assert pinned in str(err.value) and _sha(b"served" * 1000) in str(err.value)
    assert len(state.requests) == 2 and list(tmp_path.iterdir()) == []


def test_server_closing_mid_transfer_every_time_keeps_part_for_next_run(server, tmp_path):
    state, base = server
    data = bytes(range(256)) * 400
    state.files["/f"] = data
    state.cut_after, state.cut_times = 10_000, 3  # each of the 3 attempts gets 10,000 more
    with pytest.raises(DownloadError, match="giving up after 3 attempts") as err:
        download(DownloadSpec(f"{base}/f", _sha(data)), tmp_path / "f", FAST)
    assert "30000 bytes" in str(err.value) and "resumes" in str(err.value)
    assert not (tmp_path / "f").exists() and (tmp_path / "f.part").stat().st_size == 30_000
    download(DownloadSpec(f"{base}/f", _sha(data)), tmp_path / "f", FAST)  # the next run
    assert state.requests[-1] == ("/f", "bytes=30000-")
    assert (tmp_path / "f").read_bytes() == data


def test_content_length_larger_than_body_resumes_and_verifies(server, tmp_path):
    state, base = server
    data = b"x" * 5000 + b"y" * 5000
    state.files["/f"] = data
    state.length_delta = 100  # announces 100 bytes it never sends
    download(DownloadSpec(f"{base}/f", _sha(data)), tmp_path / "f", FAST)
    assert (tmp_path / "f").read_bytes() == data


def test_content_length_smaller_than_body_fails_checksum_naming_digests(server, tmp_path):
    state, base = server
    data = b"z" * 10_000
    state.files["/f"] = data
    state.length_delta = -100  # the client reads 100 bytes short
    with pytest.raises(ChecksumError) as err:
        download(DownloadSpec(f"{base}/f", _sha(data)), tmp_path / "f", FAST)
    assert f"expected {_sha(data)}, got {_sha(data[:-100])}" in str(err.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_error_retried_then_succeeds(server, tmp_path, status):
    state, base = server
    state.files["/f"] = b"ok" * 100
    state.status, state.status_times = status, 2
    download(DownloadSpec(f"{base}/f", _sha(b"ok" * 100)), tmp_path / "f", FAST)
    assert len(state.requests) == 3 and (tmp_path / "f").read_bytes() == b"ok" * 100


@pytest.mark.parametrize("status", [401, 403, 404, 410])
def test_client_error_not_retried(server, tmp_path, status):
    state, base = server
    state.status = status
    with pytest.raises(DownloadError, match=f"HTTP {status} .*check the URL"):
        download(DownloadSpec(f"{base}/f", _sha(b"")), tmp_path / "f", FAST)
    assert len(state.requests) == 1 and list(tmp_path.iterdir()) == []


def test_redirect_loop_named(server, tmp_path):
    state, base = server
    state.redirect_loop = True
    with pytest.raises(DownloadError, match="too many redirects.*HTTP 302 to '/hop") as err:
        download(DownloadSpec(f"{base}/f", _sha(b"")), tmp_path / "f", FAST)
    assert f"{base}/f" in str(err.value) and len(state.requests) <= 11
    assert list(tmp_path.iterdir()) == []


def test_disk_full_leaves_no_final_file_and_resumable_part(server, tmp_path, monkeypatch):
    """ENOSPC while writing (a full scratch disk): a clear error, no file at the final name,
    the bytes written so far kept for the next run."""
    state, base = server
    data = bytes(range(256)) * 200
    state.files["/f"] = data

    class Full:
        def __init__(self, f):
            self.f, self.written = f, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, chunk):
            if self.written + len(chunk) > 20_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(chunk)
            return self.f.write(chunk)

    def full_open(*args, **kwargs):
        return Full(builtins.open(*args, **kwargs))  # noqa: SIM115 (closed by Full.__exit__)

    monkeypatch.setattr(dl, "open", full_open, raising=False)
    with pytest.raises(DownloadError, match="no space left on the disk") as err:
        download(DownloadSpec(f"{base}/f", _sha(data)), tmp_path / "f", FAST)
    assert "16384 bytes" in str(err.value) and len(state.requests) == 1  # not retried
    assert not (tmp_path / "f").exists() and (tmp_path / "f.part").stat().st_size == 16_384
    monkeypatch.undo()
    download(DownloadSpec(f"{base}/f", _sha(data)), tmp_path / "f", FAST)
    assert state.requests[-1] == ("/f", "bytes=16384-") and (tmp_path / "f").read_bytes() == data


# --------------------------------------------------------------------------- sources and sizes


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_give_up_without_bytes_does_not_promise_a_part_file(tmp_path):
    """Before: 'the 0 bytes in f.part are kept and the next run resumes from them', with no
    .part file at all (no network: nothing was received)."""
    url = f"http://127.0.0.1:{_closed_port()}/f.zip"
    with pytest.raises(DownloadError, match="giving up after 3 attempts") as err:
        download(DownloadSpec(url, _sha(b"x")), tmp_path / "f.zip", FAST)
    assert "are kept" not in str(err.value) and "nothing to resume" in str(err.value)
    assert not (tmp_path / "f.zip.part").exists()


def test_empty_part_of_a_dead_connection_is_not_kept(server, tmp_path):
    state, base = server
    state.files["/f"] = b"a" * 50_000
    state.cut_after, state.cut_times = 0, 100  # every attempt dies before a byte arrives
    with pytest.raises(DownloadError, match="nothing to resume"):
        download(DownloadSpec(f"{base}/f", _sha(b"a" * 50_000)), tmp_path / "f", FAST)
    assert not (tmp_path / "f.part").exists()


def test_dead_source_hands_over_to_the_next(server, tmp_path, caplog):
    state, base = server
    data = _zip({"glove.6B.300d.txt": b"the 0.1 0.2\n"})
    state.files["/mirror/glove.6B.zip"] = data
    spec = DownloadSpec(f"{base}/gone/glove.6B.zip", "md5:" + hashlib.md5(data).hexdigest(),
                        mirrors=(f"{base}/mirror/glove.6B.zip",), size=len(data))
    with caplog.at_level("INFO", logger="mia.data.download"):
        out = download(spec, tmp_path / "glove.zip", FAST)
    assert out.read_bytes() == data
    assert [p for p, _ in state.requests] == ["/gone/glove.6B.zip", "/mirror/glove.6B.zip"]
    assert f"served by mirror 2/2 {base}/mirror/glove.6B.zip" in caplog.text


def test_source_with_other_bytes_is_skipped_for_one_that_matches(server, tmp_path):
    """A re-host with different bytes (ParlAI's COCO copies) fails the pin; the next source
    serves the pinned file."""
    state, base = server
    good, other = b"pinned bytes" * 100, b"other bytes!" * 100  # same size: only the hash tells
    state.files["/rehost/a.zip"] = other
    state.files["/official/a.zip"] = good
    spec = DownloadSpec(f"{base}/rehost/a.zip", _sha(good), mirrors=(f"{base}/official/a.zip",),
                        size=len(good))
    assert download(spec, tmp_path / "a.zip", FAST).read_bytes() == good


def test_every_source_failing_names_each_and_keeps_the_part(server, tmp_path):
    state, base = server
    data = bytes(range(256)) * 200
    state.files["/a"] = data
    state.cut_after, state.cut_times = 10_000, 100
    spec = DownloadSpec(f"{base}/missing", _sha(data), mirrors=(f"{base}/a",))
    with pytest.raises(DownloadError) as err:
        download(spec, tmp_path / "f", FAST)
    text = str(err.value)
    assert "none of its 2 sources" in text and f"{base}/missing: " in text and "HTTP 404" in text
    assert f"{base}/a: " in text and "30000 bytes" in text and "resumes" in text
    assert (tmp_path / "f.part").stat().st_size == 30_000


def test_wrong_size_refused_without_hashing(server, tmp_path, monkeypatch):
    state, base = server
    page = b"<html>Public access is not permitted</html>"
    state.files["/f.zip"] = page
    hashed = []
    monkeypatch.setattr(dl, "file_digest", lambda *a, **k: hashed.append(a) or "0")
    with pytest.raises(dl.SizeMismatchError, match="pinned size is 1000 bytes"):
        download(DownloadSpec(f"{base}/f.zip", _sha(b"z" * 1000), size=1000), tmp_path / "f.zip",
                 FAST)
    assert hashed == [] and not (tmp_path / "f.zip.part").exists()


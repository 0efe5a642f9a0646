"""Hostile and damaged archives: safe_extract refuses them whole and writes nothing anywhere.

Every archive is built here byte by byte (zipfile/tarfile with hand-set modes and link
targets), then extracted into ``work/deep/target``; after a refusal the whole ``tmp_path``
tree must be exactly what it was (no target, no temporary folder beside it, nothing above it
where ``..`` or a link chain leads). Each case is one row of docs/RELIABILITY.md.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import stat
import tarfile
import warnings
import zipfile
from pathlib import Path

import pytest

import mia.data.download as dl
from mia.data.download import CorruptArchiveError, UnsafeArchiveError, safe_extract

# --------------------------------------------------------------------------- builders


def _zip_link(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16  # how `zip -y` stores a symlink
    return info, target.encode()


def _zip_special(name: str, fmt: int) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = (fmt | 0o644) << 16
    return info, b""


def _zip(*members: tuple[str | zipfile.ZipInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": wanted here
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def _t_file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _t_link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def _t_special(name: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info, None


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for info, data in members:
            tf.addfile(info, None if data is None else io.BytesIO(data))
    return buf.getvalue()


def _snapshot(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def _refused(tmp_path: Path, data: bytes, suffix: str, match: str | None,
             error: type[Exception] = UnsafeArchiveError) -> str:
    work = tmp_path / "work"
    work.mkdir()
    archive = work / f"evil.{suffix}"
    archive.write_bytes(data)
    before = _snapshot(tmp_path)
    with pytest.raises(error, match=match) as err:
        safe_extract(archive, work / "deep" / "target")
    assert _snapshot(tmp_path) == before, "something was written"
    assert str(archive) in str(err.value)
    return str(err.value)


# --------------------------------------------------------------------------- hostile members

CHAIN = "passes through the link"
ZIP_CASES = {
    # the case: each link's own text stays inside, the chain climbs out
    "symlink_chain_d_dotdot": ((("d/x", b"x"), _zip_link("l2", "d/.."), _zip_link("l1", "l2/..")),
                               CHAIN),
    "symlink_chain_three_links": ((_zip_link("a", "."), _zip_link("b", "a/."),
                                   _zip_link("c", "b/..")), CHAIN),
    "symlink_to_symlink": ((("f", b"x"), _zip_link("l2", "f"), _zip_link("l1", "l2")), CHAIN),
    "symlink_to_itself": ((_zip_link("loop", "loop"),), CHAIN),
    "symlink_dotdot_outside": ((_zip_link("d/up", "../../x"),), "points outside"),
    "symlink_absolute": ((_zip_link("etc", "/etc"),), "absolute"),
    "symlink_windows_absolute": ((_zip_link("w", "C:\\Windows"),), "absolute"),
    "symlink_empty_target": ((_zip_link("e", ""),), "empty target"),
    "member_under_symlink": ((_zip_link("d", "."), ("d/x", b"x")), "placed under the link 'd'"),
    "member_under_file": ((("f", b"x"), ("f/x", b"x")), "placed under the file 'f'"),
    "dotdot_in_name": ((("ok", b"x"), ("../evil", b"x")), "'..' in the name"),
    "dotdot_inside_name": ((("a/../b", b"x"),), "'..' in the name"),
    "absolute_name": ((("/tmp/evil", b"x"),), "absolute path"),
    "backslash_dotdot_name": ((("..\\evil", b"x"),), "'..' in the name"),
    "duplicate_file_then_symlink": ((("x", b"x"), _zip_link("x", "/etc/passwd")),
                                    "appears twice"),
    "duplicate_symlink_then_file": ((_zip_link("x", "y"), ("x", b"x")), "appears twice"),
    "duplicate_file": ((("x", b"1"), ("x", b"2")), "appears twice"),
    "char_device": ((_zip_special("dev", stat.S_IFCHR),), "not a regular file"),
    "fifo": ((_zip_special("pipe", stat.S_IFIFO),), "not a regular file"),
    "symlink_target_huge": ((_zip_link("big", "a/" * 3000),), "not a regular file"),
}


@pytest.mark.parametrize("case", list(ZIP_CASES))
def test_hostile_zip_refused_and_nothing_written(tmp_path, case):
    members, match = ZIP_CASES[case]
    _refused(tmp_path, _zip(*members), "zip", match)


TAR_CASES = {
    "symlink_chain_d_dotdot": ((_t_file("d/x"), _t_link("l2", "d/.."), _t_link("l1", "l2/..")),
                               CHAIN),
    "symlink_to_symlink_dir": ((_t_file("d/x"), _t_link("a", "d"), _t_link("b", "a/x")), CHAIN),
    "symlink_dotdot_outside": ((_t_link("link", "../../../etc"),), "points outside"),
    "symlink_absolute": ((_t_link("link", "/etc/passwd"),), "absolute"),
    "member_under_symlink": ((_t_link("sub", "."), _t_file("sub/evil")), "placed under the link"),
    "member_dotdot_through_symlink": ((_t_file("x/y/f"), _t_link("x/y/l", "../.."),
                                       _t_file("x/y/l/../../../z")), "'..' in the name"),
    "hardlink_outside": ((_t_link("h", "../outside", tarfile.LNKTYPE),), "points outside"),
    "hardlink_absolute": ((_t_link("h", "/etc/passwd", tarfile.LNKTYPE),), "absolute"),
    "hardlink_to_symlink": ((_t_link("s", "."), _t_link("h", "s", tarfile.LNKTYPE)), CHAIN),
    "hardlink_to_missing_member": ((_t_link("h", "nothere", tarfile.LNKTYPE),),
                                   "not a regular file of this archive"),
    "hardlink_to_folder": ((_t_special("d", tarfile.DIRTYPE), _t_link("h", "d", tarfile.LNKTYPE)),
                           "not a regular file of this archive"),
    "char_device": ((_t_special("dev/null", tarfile.CHRTYPE),), "not a regular file"),
    "block_device": ((_t_special("sda", tarfile.BLKTYPE),), "not a regular file"),
    "fifo": ((_t_special("pipe", tarfile.FIFOTYPE),), "not a regular file"),
    "duplicate_file_then_symlink": ((_t_file("x"), _t_link("x", "/etc")), "appears twice"),
    "absolute_name": ((_t_file("/abs/evil"),), "absolute path"),
    "dotdot_in_name": ((_t_file("ok"), _t_file("../evil")), "'..' in the name"),
}


@pytest.mark.parametrize("case", list(TAR_CASES))
def test_hostile_tar_refused_and_nothing_written(tmp_path, case):
    members, match = TAR_CASES[case]
    _refused(tmp_path, _tar(*members), "tar.gz", match)


def test_chain_through_link_left_by_an_earlier_archive(tmp_path):
    """Two archives unpacked into one folder (COCO's train and val zips share images/): the
    first leaves a harmless link, the second's link climbs out through it."""
    target = tmp_path / "work" / "target"
    (tmp_path / "work").mkdir()
    first, second = tmp_path / "work" / "1.zip", tmp_path / "work" / "2.zip"
    first.write_bytes(_zip(("a/f", b"x"), _zip_link("a/l2", "..")))
    safe_extract(first, target)
    second.write_bytes(_zip(_zip_link("l1", "a/l2/..")))
    before = _snapshot(tmp_path)
    with pytest.raises(UnsafeArchiveError, match="passes through the link 'a/l2'"):
        safe_extract(second, target)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_second_check_on_disk_catches_a_chain_the_first_missed(tmp_path, monkeypatch, kind):
    """With the member check switched off, the on-disk audit (realpath of every extracted link)
    still refuses the chain before anything reaches the target."""
    monkeypatch.setattr(dl, "_check_members", lambda *args: None)
    data = (_zip(("d/x", b"x"), _zip_link("l2", "d/.."), _zip_link("l1", "l2/.."))
            if kind == "zip" else
            _tar(_t_file("d/x"), _t_link("l2", "d/.."), _t_link("l1", "l2/..")))
    message = _refused(tmp_path, data, kind, "resolves outside|outside the destination")
    assert "l1" in message


# --------------------------------------------------------------------------- damaged archives


def _zip_bytes() -> bytes:
    return _zip(("annotations/a.json", b'{"images": []}' * 500), ("annotations/b.txt", b"b" * 9000))


def _flip_in_member(data: bytes) -> bytes:
    raw = bytearray(data)
    at = raw.index(b'{"images"') + 20  # inside the stored (uncompressed) bytes of a.json
    raw[at] ^= 0x20
    return bytes(raw)


DAMAGED = {
    "zip_truncated": (lambda: _zip_bytes()[:-200], "neither a zip nor a tar", UnsafeArchiveError),
    "zip_bit_flip_in_member": (lambda: _flip_in_member(_zip_bytes()), "damaged",
                               CorruptArchiveError),
    "tar_gz_truncated": (lambda: _tar(_t_file("a", os.urandom(50_000)))[:-3000], "damaged",
                         CorruptArchiveError),
    "html_error_page": (lambda: b"<html>403 Forbidden</html>", "neither a zip nor a tar",
                        UnsafeArchiveError),
    "empty_file": (lambda: b"", "neither a zip nor a tar", UnsafeArchiveError),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_archive_refused_and_nothing_written(tmp_path, case):
    make, match, error = DAMAGED[case]
    _refused(tmp_path, make(), "zip" if case.startswith(("zip", "html", "empty")) else "tar.gz",
             match, error)


def test_archive_larger_than_free_space_refused_before_writing(tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    with pytest.raises(OSError, match="no space left.*unpacks to 18000 bytes, 1000 are free"):
        _refused(tmp_path, _zip(("a", b"a" * 9000), ("b", b"b" * 9000)), "zip", None)
    assert _snapshot(tmp_path) == ["work", "work/evil.zip"]


def test_disk_full_during_extraction_leaves_nothing(tmp_path, monkeypatch):
    def full(src, dst, length=0):
        dst.write(src.read(10))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dl.shutil, "copyfileobj", full)
    with pytest.raises(OSError, match="no space left extracting") as err:
        _refused(tmp_path, _zip_bytes(), "zip", None)
    assert err.value.errno == errno.ENOSPC
    assert _snapshot(tmp_path) == ["work", "work/evil.zip"]


def test_missing_archive_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="archive not found"):
        safe_extract(tmp_path / "gone.zip", tmp_path / "out")


# --------------------------------------------------------------------------- still accepted


def test_plain_archives_and_safe_links_still_extract(tmp_path):
    """What real archives look like: folders and files (COCO), './'-prefixed tar members
    (`tar czf x.tgz .`), and links that stay inside and point at real members."""
    zip_path, tar_path = tmp_path / "coco.zip", tmp_path / "hand.tar.gz"
    zip_path.write_bytes(_zip(("train2014/", b""), ("train2014/a.jpg", b"A"),
                              ("train2014/b.jpg", b"B")))
    dot = tarfile.TarInfo(".")
    dot.type = tarfile.DIRTYPE
    tar_path.write_bytes(_tar((dot, None), _t_file("./d/real.txt", b"content"),
                              _t_link("./d/soft", "real.txt"), _t_link("up", "d/real.txt"),
                              _t_link("./d/hard", "d/real.txt", tarfile.LNKTYPE)))
    safe_extract(zip_path, tmp_path / "images")
    safe_extract(tar_path, tmp_path / "hand")
    assert (tmp_path / "images/train2014/b.jpg").read_bytes() == b"B"
    for name in ("d/soft", "up", "d/hard"):
        assert (tmp_path / "hand" / name).read_bytes() == b"content"
    assert os.path.islink(tmp_path / "hand/up")

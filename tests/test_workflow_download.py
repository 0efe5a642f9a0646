"""The download and extraction rules through Snakemake, on a local file:// archive.

A reproduction must verify its inputs: an entry whose sha256 is still null is refused with the
config key to fill in, a wrong digest never reaches the archive's final name, and a verified
archive is unpacked into the raw layout (only the members the config names).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

SNAKEMAKE = shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")
KARPATHY = '{"images": [], "dataset": "coco"}'


@pytest.fixture()
def archive(tmp_path: Path) -> Path:
    """A caption_datasets.zip laid out like the real one (three JSON files at the top)."""
    path = tmp_path / "src" / "caption_datasets.zip"
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("dataset_coco.json", KARPATHY)
        z.writestr("dataset_flickr8k.json", "{}")
        z.writestr("dataset_flickr30k.json", "{}")
    return path


def run(repo_root: Path, workdir: Path, url: str, sha256: str | None
        ) -> subprocess.CompletedProcess:
    override = workdir / "override.yaml"
    override.write_text(yaml.safe_dump({
        "name": "dltest", "data": {"root": "raw", "downloads_dir": "downloads"},
        "downloads": {"karpathy_split": {"url": url, "sha256": sha256}}}))
    cmd = [SNAKEMAKE, "raw/karpathy/dataset_coco.json", "-s", str(repo_root / "Snakefile"),
           "--directory", str(workdir), "--cores", "1",
           "--configfile", str(repo_root / "config.yaml"), str(override)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def log_text(workdir: Path) -> str:
    return "\n".join(p.read_text() for p in (workdir / "results/dltest/logs").rglob("*.log"))


def test_null_checksum_is_refused_naming_the_key(repo_root: Path, tmp_path: Path,
                                                 archive: Path) -> None:
    out = run(repo_root, tmp_path, archive.as_uri(), None)
    assert out.returncode != 0
    assert "downloads.karpathy_split.sha256 is null" in log_text(tmp_path) + out.stderr
    assert not (tmp_path / "downloads/karpathy_split.zip").exists()


def test_wrong_checksum_leaves_no_archive(repo_root: Path, tmp_path: Path, archive: Path) -> None:
    out = run(repo_root, tmp_path, archive.as_uri(), "0" * 64)
    assert out.returncode != 0
    assert "mismatch" in log_text(tmp_path) + out.stderr
    assert not (tmp_path / "downloads/karpathy_split.zip").exists()
    assert not (tmp_path / "raw/karpathy/dataset_coco.json").exists()


def test_verified_archive_is_extracted_into_the_raw_layout(repo_root: Path, tmp_path: Path,
                                                           archive: Path) -> None:
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    out = run(repo_root, tmp_path, archive.as_uri(), digest)
    assert out.returncode == 0, out.stderr[-3000:] + log_text(tmp_path)
    assert (tmp_path / "raw/karpathy/dataset_coco.json").read_text() == KARPATHY
    assert sorted(p.name for p in (tmp_path / "raw/karpathy").iterdir()) == ["dataset_coco.json"]
    assert (tmp_path / "downloads/karpathy_split.zip").read_bytes() == archive.read_bytes()

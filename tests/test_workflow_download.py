"""The download and extraction rules through Snakemake, on local archives (file:// and a local
HTTP server on 127.0.0.1).

A reproduction must verify its inputs: planned downloads without a pin are refused before any job
starts, all named in one message; so are downloads none of whose sources answers (no network);
a wrong digest never reaches the archive's final name; a zip put into the downloads folder by
hand is verified before it is extracted; a verified archive is unpacked into the raw layout (only
the members the config names); a download that gives up says so in one line, no traceback.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import socket
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

SNAKEMAKE = shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")
KARPATHY = '{"images": [], "dataset": "coco"}'
TARGETS = ("raw/karpathy/dataset_coco.json",)


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


def run(repo_root: Path, workdir: Path, downloads: dict, targets: tuple[str, ...] = TARGETS,
        *extra: str) -> subprocess.CompletedProcess:
    override = workdir / "override.yaml"
    override.write_text(yaml.safe_dump({
        "name": "dltest", "data": {"root": "raw", "downloads_dir": "downloads"},
        "downloads": downloads}))
    cmd = [SNAKEMAKE, *targets, "-s", str(repo_root / "Snakefile"), "--directory", str(workdir),
           "--cores", "1", *extra, "--configfile", str(repo_root / "config.yaml"), str(override)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def karpathy(url: str, sha256: str | None, **more: object) -> dict:
    return {"karpathy_split": {"urls": [url], "sha256": sha256, "size": None, **more}}


def log_text(workdir: Path) -> str:
    logs = workdir / "results/dltest/logs"
    return "\n".join(p.read_text() for p in logs.rglob("*.log")) if logs.exists() else ""


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_null_checksum_is_refused_naming_the_key(repo_root: Path, tmp_path: Path,
                                                 archive: Path) -> None:
    out = run(repo_root, tmp_path, karpathy(archive.as_uri(), None))
    assert out.returncode != 0
    assert "no pinned checksum" in out.stderr and "karpathy_split" in out.stderr
    assert not (tmp_path / "downloads/karpathy_split.zip").exists()
    assert log_text(tmp_path) == ""  # refused before any job started


def test_every_unpinned_key_named_in_one_message_before_any_job(repo_root: Path, tmp_path: Path,
                                                                 archive: Path) -> None:
    """Before: only the keys of the jobs that happened to start were named, two at a time."""
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    downloads = {**karpathy(archive.as_uri(), digest),
                 "glove_6b": {"urls": [archive.as_uri()], "sha256": None, "md5": None},
                 "vqa_val_questions": {"urls": [archive.as_uri()], "sha256": None},
                 "vqa_train_questions": {"urls": [archive.as_uri()], "sha256": None}}
    targets = ("raw/karpathy/dataset_coco.json", "raw/glove/glove.6B.300d.txt",
               "raw/vqa/v2_OpenEnded_mscoco_val2014_questions.json",
               "raw/vqa/v2_OpenEnded_mscoco_train2014_questions.json")
    out = run(repo_root, tmp_path, downloads, targets, "--cores", "4")
    assert out.returncode != 0
    refusals = re.findall(r"These inputs have no pinned checksum.*", out.stderr)
    assert len(refusals) == 1, out.stderr[-3000:]
    assert "glove_6b, vqa_train_questions, vqa_val_questions" in refusals[0]
    assert "karpathy_split" not in refusals[0]
    assert not (tmp_path / "downloads").exists() and log_text(tmp_path) == ""


def test_no_network_fails_with_one_message_and_the_fix(repo_root: Path, tmp_path: Path) -> None:
    port = _closed_port()
    downloads = {**karpathy(f"http://127.0.0.1:{port}/caption_datasets.zip", "1" * 64),
                 "glove_6b": {"urls": [f"http://127.0.0.1:{port}/glove.6B.zip"],
                              "sha256": None, "md5": "2" * 32}}
    out = run(repo_root, tmp_path, downloads,
              ("raw/karpathy/dataset_coco.json", "raw/glove/glove.6B.300d.txt"))
    assert out.returncode != 0
    assert out.stderr.count("No source answers") == 1, out.stderr[-3000:]
    assert "karpathy_split: http://127.0.0.1" in out.stderr and "glove_6b: " in out.stderr
    assert "mia data register" in out.stderr and "network" in out.stderr
    assert "Traceback" not in out.stderr
    assert log_text(tmp_path) == ""


def test_wrong_checksum_leaves_no_archive(repo_root: Path, tmp_path: Path, archive: Path) -> None:
    out = run(repo_root, tmp_path, karpathy(archive.as_uri(), "0" * 64))
    assert out.returncode != 0
    assert "mismatch" in log_text(tmp_path)
    assert not (tmp_path / "downloads/karpathy_split.zip").exists()
    assert not (tmp_path / "raw/karpathy/dataset_coco.json").exists()


def test_verified_archive_is_extracted_into_the_raw_layout(repo_root: Path, tmp_path: Path,
                                                           archive: Path) -> None:
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    out = run(repo_root, tmp_path, karpathy(archive.as_uri(), digest,
                                            size=archive.stat().st_size))
    assert out.returncode == 0, out.stderr[-3000:] + log_text(tmp_path)
    assert (tmp_path / "raw/karpathy/dataset_coco.json").read_text() == KARPATHY
    assert sorted(p.name for p in (tmp_path / "raw/karpathy").iterdir()) == ["dataset_coco.json"]
    assert (tmp_path / "downloads/karpathy_split.zip").read_bytes() == archive.read_bytes()
    logs = tmp_path / "results/dltest/logs"
    assert f"served by {archive.as_uri()}" in (logs / "download/karpathy_split.log").read_text()
    assert "not hashed again" in (logs / "extract/karpathy_split.log").read_text()


@pytest.mark.parametrize("good", [True, False])
def test_zip_put_in_by_hand_is_verified_before_extraction(repo_root: Path, tmp_path: Path,
                                                          archive: Path, good: bool) -> None:
    """Before: only the download rule checked; a zip dropped into the folder was extracted."""
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    (tmp_path / "downloads").mkdir()
    dropped = tmp_path / "downloads/karpathy_split.zip"
    if good:
        shutil.copyfile(archive, dropped)
    else:
        with zipfile.ZipFile(dropped, "w") as z:
            z.writestr("dataset_coco.json", '{"images": [1], "dataset": "coco"}')
    out = run(repo_root, tmp_path, karpathy(f"http://127.0.0.1:{_closed_port()}/c.zip", digest))
    text = log_text(tmp_path)
    assert "download" not in {p.name for p in (tmp_path / "results/dltest/logs").iterdir()}
    if good:
        assert out.returncode == 0, out.stderr[-3000:] + text
        assert "checking its sha256" in text
        assert (tmp_path / "raw/karpathy/dataset_coco.json").read_text() == KARPATHY
    else:
        assert out.returncode != 0
        assert "not the pinned file" in text and f"pin is {digest}" in text
        assert not (tmp_path / "raw/karpathy/dataset_coco.json").exists()


class _ProbeOnly(BaseHTTPRequestHandler):
    """Answers the preflight's one-byte probe, then refuses the download itself (403)."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        if self.headers.get("Range") == "bytes=0-0":
            self.send_response(206)
            self.send_header("Content-Range", "bytes 0-0/100")
            self.send_header("Content-Length", "1")
            self.end_headers()
            self.wfile.write(b"P")
        else:
            self.send_error(403)


@pytest.mark.network_local
def test_give_up_is_one_line_without_traceback(repo_root: Path, tmp_path: Path) -> None:
    """Before: the download's DownloadError reached the log as a Python traceback."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _ProbeOnly)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/caption_datasets.zip"
        out = run(repo_root, tmp_path, karpathy(url, "1" * 64))
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert out.returncode != 0
    text = (tmp_path / "results/dltest/logs/download/karpathy_split.log").read_text()
    assert "HTTP 403" in text and "mia data register karpathy_split FILE" in text
    assert "Traceback" not in text
    assert not list((tmp_path / "downloads").glob("*.part"))


def test_every_provided_file_is_read(repo_root: Path, tmp_path: Path) -> None:
    """Each file a download provides is an input of a planned job: the paper as configured, and
    with features.regions.source: boxes (the one reader of COCO's instance annotations).
    Before: coco_annotations_2014 provided captions_*2014.json, which nothing reads."""
    read, provided = set(), {}
    for source in ("auto", "boxes"):
        workdir = tmp_path / source
        workdir.mkdir()
        override = workdir / "o.yaml"
        server = source == "auto"  # COCO has no boxes for test2015: boxes runs no server runs
        override.write_text(yaml.safe_dump({"features": {"regions": {"source": source}},
                                            "vqa": {"server": {"enabled": server}}}))
        out = subprocess.run(
            [SNAKEMAKE, "-n", "-s", str(repo_root / "Snakefile"), "--directory", str(workdir),
             "--configfile", str(repo_root / "config.yaml"), str(override)],
            capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr[-3000:]
        text = out.stdout + out.stderr
        for line in re.findall(r"^\s+input: (.*)$", text, flags=re.M):
            read.update(p.strip() for p in line.split(","))
        for rule, block in re.findall(r"^rule (extract_\w+):\n((?:    .*\n)+)", text, flags=re.M):
            outputs = re.search(r"^    output: (.*)$", block, flags=re.M).group(1)
            provided[rule] = [p.strip() for p in outputs.split(",")]
    assert "extract_coco_annotations_2014" in provided
    unread = {rule: [p for p in paths if p not in read] for rule, paths in provided.items()}
    assert all(not v for v in unread.values()), unread


def test_readme_tells_a_killed_local_run_to_unlock_and_rerun_incomplete(repo_root: Path) -> None:
    """Before: --unlock / --rerun-incomplete appeared only in the Slurm section, but a local
    run killed with SIGKILL needs them too (its lock and incomplete markers stay behind)."""
    text = (repo_root / "README.md").read_text()
    local = text.split("## Run on a Slurm cluster")[0]
    assert "--unlock" in local and "--rerun-incomplete" in local
    assert "mia data register" in local and "--trust" in local
    assert "Region features" in local and "bottom_up_tsv" in local

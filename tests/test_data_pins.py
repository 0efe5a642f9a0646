"""Pins, the user's lock file, verification stamps, registered copies, the region source under
``auto``, and the preflight check (mia.data.pins, .register, .preflight, mia.features.region_source).

The published pins of config.yaml are checked here against the files that publish them, as
copied into this test (tensorflow/datasets url_checksums, facebookresearch/ParlAI's vqa_v2
build.py, GloVe's MD5 in public download scripts): a typo in config.yaml fails a test.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from mia.config import load_config
from mia.data import pins
from mia.data.download import ChecksumError, SizeMismatchError
from mia.data.pins import Pin, config_pin, effective_pin, read_lock, verify_file
from mia.data.preflight import PreflightError, check_planned_downloads, probe
from mia.data.register import register_copy, restore_registered
from mia.features.region_source import resolve_region_source

# (key, algo, digest, size) as published; sizes from the same files where they give one.
PUBLISHED = [
    # tensorflow/datasets tensorflow_datasets/url_checksums/coco.txt (url, size, sha256)
    ("coco_train2014_images", "sha256",
     "ede4087e640bddba550e090eae701092534b554b42b05ac33f0300b984b31775", 13510573713),
    ("coco_val2014_images", "sha256",
     "fe9be816052049c34717e077d9e34aa60814a55679f804cd043e3cbee3b9fde0", 6645013297),
    ("coco_annotations_2014", "sha256",
     "031296bbc80c45a1d1f76bf9a90ead27e94e99ec629208449507a4917a3bf009", 252872794),
    ("coco_test2015_images", "sha256",
     "1a2aa896b81140a850a78fa8bff07d455698d2abf364ff05721763458a8101ca", 13270587935),
    # tensorflow/datasets tensorflow_datasets/url_checksums/coco_captions.txt
    ("karpathy_split", "sha256",
     "4cfd70132527b80933105e5829dc9034eaab9573482e2e680abbab6130244817", 36745453),
    # facebookresearch/ParlAI parlai/tasks/vqa_v2/build.py (no sizes there)
    ("vqa_train_questions", "sha256",
     "05a64b6e2582d06d7585f5429674a9a33851878be1bff9f8668cdcf792df611e", 7239401),
    ("vqa_val_questions", "sha256",
     "e71f6c5c3e97a51d050f28243e262b28cd0c48d11a6b4632d769d30d3f93222a", 3494929),
    ("vqa_train_annotations", "sha256",
     "fb101bcefe91422c543c2bb6d70af11eb3119d0ff745ae283d09acdf66250853", 21708861),
    ("vqa_val_annotations", "sha256",
     "0caae7c8d1dafd852727f5ac046bc1efca9b72026bd6ffa34fc489f3a7b3291e", 10518930),
    ("vqa_test_questions", "sha256",
     "982e2e687a86514b78ea83af356d151976c5e3fb4168a29ca543610574082ad7", None),
    # GloVe publishes no checksum; public download scripts check this MD5
    ("glove_6b", "md5", "056ea991adb4740ac6bf1b6d9b50408b", 862182613),
]


@pytest.fixture(scope="module")
def paper_config(repo_root: Path) -> dict:
    return load_config([repo_root / "config.yaml"])


@pytest.mark.parametrize(("key", "algo", "digest", "size"), PUBLISHED)
def test_config_pins_are_the_published_ones(paper_config, key, algo, digest, size) -> None:
    assert config_pin(paper_config["downloads"][key], key) == Pin(algo, digest, size)


def test_unpublished_inputs_stay_unpinned_and_mirrors_are_ordered(paper_config) -> None:
    downloads = paper_config["downloads"]
    assert {k for k, s in downloads.items() if config_pin(s, k) is None} == {
        "bottom_up_features", "bottom_up_test2015_features", "bottom_up_frcnn_weights_detectron2"}
    assert downloads["glove_6b"]["urls"] == [  # the GloVe README's order: HF, then its mirror
        "https://huggingface.co/stanfordnlp/glove/resolve/main/glove.6B.zip",
        "https://nlp.stanford.edu/data/wordvecs/glove.6B.zip"]
    assert not any("parl.ai" in u for s in downloads.values() for u in s["urls"])  # other bytes


def test_region_source_auto(paper_config) -> None:
    downloads = paper_config["downloads"]
    user = {"bottom_up_features": {"sha256": "a" * 64, "size": 5, "source": "/lab/t.zip"}}
    both = {**user, "bottom_up_test2015_features": {"sha256": "b" * 64}}
    assert resolve_region_source("auto", downloads, {}, server_enabled=True) == "bottom_up"
    assert resolve_region_source("auto", downloads, user, server_enabled=False) == "bottom_up_tsv"
    # the server runs need the test2015 TSVs too, or the regions come from one source: the images
    assert resolve_region_source("auto", downloads, user, server_enabled=True) == "bottom_up"
    assert resolve_region_source("auto", downloads, both, server_enabled=True) == "bottom_up_tsv"
    pinned = {**downloads, "bottom_up_features": {**downloads["bottom_up_features"],
                                                  "sha256": "c" * 64}}
    assert resolve_region_source("auto", pinned, {}, server_enabled=False) == "bottom_up_tsv"
    # a lock entry that only records where a copy is (no digest) does not pin anything
    assert resolve_region_source("auto", downloads, {"bottom_up_features": {"source": "/x"}},
                                 server_enabled=False) == "bottom_up"
    for explicit in ("bottom_up_tsv", "boxes", "detectron2"):
        assert resolve_region_source(explicit, downloads, {}, True) == explicit


def test_publisher_pin_wins_over_a_lock_entry() -> None:
    spec = {"urls": ["http://x/a.zip"], "sha256": "1" * 64, "size": 3}
    lock = {"k": {"sha256": "2" * 64, "size": 4}}
    assert effective_pin("k", spec, lock) == Pin("sha256", "1" * 64, 3, "publisher")
    assert effective_pin("k", {**spec, "sha256": None}, lock) == Pin("sha256", "2" * 64, 4, "user")
    assert effective_pin("k", {**spec, "sha256": None}, {}) is None
    assert config_pin({"sha256": None, "md5": "f" * 32}) == Pin("md5", "f" * 32)
    assert config_pin({"sha256": "md5:" + "e" * 32}) == Pin("md5", "e" * 32)  # the older form


def _archive(tmp_path: Path, data: bytes = b"PK\x05\x06" + bytes(18)) -> tuple[Path, Pin]:
    path = tmp_path / "lab" / "copy.zip"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path, Pin("sha256", hashlib.sha256(data).hexdigest(), len(data))


def test_size_is_checked_before_hashing(tmp_path, monkeypatch) -> None:
    path, pin = _archive(tmp_path)
    hashed = []
    monkeypatch.setattr(pins, "file_digest", lambda *a, **k: hashed.append(a) or "x")
    with pytest.raises(SizeMismatchError, match="pinned size is 23 bytes"):
        verify_file(path, Pin(pin.algo, pin.digest, pin.size + 1), "downloads.k")
    assert hashed == []


def test_stamp_spares_a_second_hash_until_the_file_changes(tmp_path, monkeypatch) -> None:
    path, pin = _archive(tmp_path)
    assert verify_file(path, pin, "k") is True  # hashed, stamped
    calls = []
    real = pins.file_digest
    monkeypatch.setattr(pins, "file_digest", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert verify_file(path, pin, "k") is False and calls == []
    path.write_bytes(b"PK\x05\x06" + bytes(17) + b"\x01")  # same size, other bytes, new mtime
    with pytest.raises(ChecksumError, match="has sha256"):
        verify_file(path, pin, "k")
    assert calls == [1]
    assert not pins.stamp_path(path).exists()  # a failed check leaves no stamp behind


def test_register_published_key_links_and_verifies(tmp_path) -> None:
    path, pin = _archive(tmp_path)
    downloads = {"karpathy_split": {"urls": ["http://x/c.zip"], "sha256": pin.digest,
                                    "size": pin.size}}
    done = register_copy("karpathy_split", path, downloads, tmp_path / "dl")
    archive = tmp_path / "dl" / "karpathy_split.zip"
    assert done.archive == archive and archive.is_symlink() and archive.resolve() == path
    assert done.pin.by == "publisher" and not done.recorded_pin
    lock = read_lock(tmp_path / "dl")
    assert lock["karpathy_split"]["source"] == str(path) and "sha256" not in lock["karpathy_split"]
    assert verify_file(archive, pin, "k") is False  # the registration's check is remembered
    wrong = {"karpathy_split": {**downloads["karpathy_split"], "sha256": "0" * 64}}
    with pytest.raises(ChecksumError, match="not the file the publisher released"):
        register_copy("karpathy_split", path, wrong, tmp_path / "dl2")
    assert not (tmp_path / "dl2" / "karpathy_split.zip").exists()


def test_register_unpublished_key_needs_trust_and_writes_only_the_lock(tmp_path) -> None:
    path, pin = _archive(tmp_path)
    downloads = {"bottom_up_features": {"urls": ["http://x/t.zip"], "sha256": None}}
    with pytest.raises(ValueError, match="--trust"):
        register_copy("bottom_up_features", path, downloads, tmp_path / "dl")
    assert not (tmp_path / "dl").exists()
    done = register_copy("bottom_up_features", path, downloads, tmp_path / "dl", trust=True,
                         mode="copy")
    archive = tmp_path / "dl" / "bottom_up_features.zip"
    assert done.recorded_pin and done.pin == Pin("sha256", pin.digest, pin.size, "user")
    assert not archive.is_symlink() and archive.read_bytes() == path.read_bytes()
    text = (tmp_path / "dl" / "local.lock.yaml").read_text()
    assert "pinned by the user, not by the publisher" in text
    assert yaml.safe_load(text)["bottom_up_features"]["sha256"] == pin.digest
    # the next registration checks against the user's pin; another file needs --trust again
    other, _ = _archive(tmp_path / "lab", b"PK\x05\x06" + bytes(20))
    with pytest.raises(ChecksumError, match="--trust"):
        register_copy("bottom_up_features", other, downloads, tmp_path / "dl")


def test_restore_registered_relinks_after_snakemake_removed_it(tmp_path) -> None:
    path, pin = _archive(tmp_path)
    downloads = {"k": {"urls": ["http://x/c.zip"], "sha256": pin.digest, "size": pin.size}}
    archive = register_copy("k", path, downloads, tmp_path / "dl").archive
    archive.unlink()  # what Snakemake does before it reruns the download job
    assert restore_registered("k", archive, read_lock(tmp_path / "dl"), pin)
    assert archive.resolve() == path
    path.unlink()
    archive.unlink()
    assert not restore_registered("k", archive, read_lock(tmp_path / "dl"), pin)


def test_register_command_line(tmp_path, repo_root) -> None:
    path, pin = _archive(tmp_path)
    overlay = tmp_path / "over.yaml"
    overlay.write_text(yaml.safe_dump({"downloads": {"karpathy_split": {
        "urls": ["http://127.0.0.1:9/caption_datasets.zip"], "sha256": pin.digest,
        "size": pin.size}}}))
    run = subprocess.run([sys.executable, "-m", "mia", "data", "register", "karpathy_split",
                          str(path), "--configfile", str(overlay)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "registered downloads.karpathy_split" in run.stdout
    assert (tmp_path / "resources/downloads/karpathy_split.zip").resolve() == path
    bad = subprocess.run([sys.executable, "-m", "mia", "data", "register", "bottom_up_features",
                          str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--trust" in bad.stderr and "Traceback" not in bad.stderr


# ------------------------------------------------------------------ preflight
class _Probe(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/ok.zip":
            self.send_response(206)
            self.send_header("Content-Range", "bytes 0-0/1000")
            self.send_header("Content-Length", "1")
            self.end_headers()
            self.wfile.write(b"P")
        elif self.path == "/gone.zip":
            self.send_error(409, "Public access is not permitted")
        else:
            self.send_error(404)


@pytest.fixture()
def probe_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Probe)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.network_local
def test_probe(probe_server) -> None:
    assert probe(f"{probe_server}/ok.zip") is None
    assert probe(f"{probe_server}/ok.zip", size=1000) is None
    assert "not the pinned 999" in probe(f"{probe_server}/ok.zip", size=999)
    assert probe(f"{probe_server}/gone.zip") == "HTTP 409 Public access is not permitted"
    assert "unreachable" in probe(f"http://127.0.0.1:{_closed_port()}/x.zip", timeout=5)


@pytest.mark.network_local
def test_preflight_names_everything_in_one_message(probe_server, tmp_path) -> None:
    pinned = {"sha256": "1" * 64, "size": None}
    downloads = {
        "a": {"urls": [f"{probe_server}/gone.zip", f"{probe_server}/ok.zip"], **pinned},
        "b": {"urls": [f"{probe_server}/gone.zip", f"http://127.0.0.1:{_closed_port()}/b.zip"],
              **pinned},
        "c": {"urls": [f"{probe_server}/ok.zip"], "sha256": None},
        "d": {"urls": [f"{probe_server}/ok.zip"], "sha256": None},
        "e": {"urls": [f"{probe_server}/missing.zip"], **pinned},
    }
    check_planned_downloads(["a"], [], downloads, {}, str(tmp_path))  # a mirror answers
    with pytest.raises(PreflightError) as err:
        check_planned_downloads(["a", "b", "c", "e"], ["d"], downloads, {}, str(tmp_path))
    text = str(err.value)
    assert "no pinned checksum" in text and "c, d" in text and "--trust" in text
    assert "b: " in text and "HTTP 409" in text and "unreachable" in text
    assert "e: " in text and "HTTP 404" in text and "a: " not in text
    assert "mia data register" in text and "proxy" in text
    # the user's pin makes c usable; d's archive is extracted only, no network question
    lock = {"c": {"sha256": "2" * 64}, "d": {"sha256": "3" * 64}}
    check_planned_downloads(["c"], ["d"], downloads, lock, str(tmp_path))


def test_stamp_of_a_download_survives_snakemakes_touch_only_while_protected(tmp_path) -> None:
    """Snakemake touches a job's outputs after the job and write-protects the download; the
    download's stamp must still spare the extraction a second hash (before: it hashed again)."""
    import os

    path, pin = _archive(tmp_path)
    pins.record_verified(path, pin, snakemake_output=True)
    os.utime(path, ns=(1, 2))  # Snakemake's touch
    assert verify_file(path, pin, "k") is True  # still writable: it could have changed, hashed
    pins.record_verified(path, pin, snakemake_output=True)
    os.utime(path, ns=(3, 4))
    path.chmod(0o444)  # protected()
    assert verify_file(path, pin, "k") is False
    assert '"mtime_ns": 4' in pins.stamp_path(path).read_text()  # the mtime is now pinned down


def test_download_names_archives_and_plain_files() -> None:
    """Where the download rules put a key: archives as .zip, weights with their own suffix (so
    `mia data register` links a copy where download_archive / download_file expect it)."""
    assert pins.download_name("k", {"urls": ["http://x/a.zip"], "extract_to": "."}) == "k.zip"
    weights = {"urls": ["https://huggingface.co/u/m/resolve/main/pytorch_model.bin?x=1"]}
    assert pins.download_name("w", weights) == "w.bin"

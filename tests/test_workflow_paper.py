"""The paper path end to end, on a miniature of the real world served on 127.0.0.1.

tests/paper_world.py builds every archive of config.yaml's downloads with its real name and
internal layout from the real COCO images and captions of tests/data/coco-mini, and serves them
with Range support. The PAPER config runs on it through Snakemake: config.yaml plus an overlay
that keeps ``data.source: download`` and every run of the paper, and shrinks only sizes (epochs,
widths, image size, a stand-in ResNet-152 weights file, one row of each kind per table) and
points the pins at the miniature's digests.

Along the way the world misbehaves as the real one does: the first transfer of train2014.zip is
cut midway (the download resumes with Range), GloVe's first source answers 404 (its mirror
serves), the Karpathy split is a copy the lab already has (registered, never requested), and the
bottom-up features exist only as the lab's copy with no published checksum (registered with
--trust, so ``features.regions.source: auto`` reads the TSVs and the report says who pinned them).

Cost: about 70 jobs, each a few seconds (measured below; the test prints its wall time).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import yaml
from paper_world import ARCHIVES, World, WorldServer, build_world, write_backbone_weights
from workflow_support import REPO_ROOT, job_counts, rule_logs, snakemake

from mia.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.network_local, pytest.mark.java]

PAPER_DAG_TIMEOUT_S = 2400  # a 2-core machine shared by other jobs is several times slower
NAME = "paperworld"
VA = "captioning/visual_attention"
REGISTERED = ("karpathy_split", "bottom_up_features")  # the lab's own copies


def sizes_overlay(weights: Path) -> dict:
    """config.yaml's paper, smaller: only sizes change (and SPICE, which needs the internet).
    ResNet-152's ImageNet file comes from ``weights`` (as on a cluster without internet)."""
    return {
        "name": NAME,
        "preprocess": {"vqa": {"min_answer_count": 1}},
        "features": {
            "grid": {"weights_path": str(weights), "image_size": 64, "batch_size": 8,
                     "num_workers": 0, "device": "cpu"},
            "concepts": {"epochs": 1, "batch_size": 8, "device": "cpu"},
        },
        "captioning": {
            "model": {"d_model": 32, "embed_dim": 32, "attention_dim": 16, "mia_heads": 2,
                      "mia_d_ff": 32,
                      "cnn": {"weights_path": str(weights), "resize": 72, "crop": 64,
                              "workers": 0}},
            "train": {"epochs": 1, "batch_size": 20, "checkpoint_every": 100, "log_every": 10,
                      "val_batch_size": 50, "device": "cpu"},
            "decode": {"batch_size": 50, "device": "cpu"},
            "scst": {"batch_size": 5, "checkpoint_every": 100, "log_every": 5,
                     "val_batch_size": 50, "device": "cpu"},
            "baselines": {
                "updown": {"model": {"d_model": 32, "embed_dim": 32, "attention_dim": 16,
                                     "options": {"rnn_size": 32}},
                           "train": {"batch_size": 20}, "scst": {"epochs": 1}},
                "transformer": {"model": {"options": {"encoder_layers": 1, "decoder_layers": 1,
                                                      "heads": 2, "d_ff": 32}},
                                "train": {"epochs": 1, "batch_size": 20, "warmup_steps": 10},
                                "scst": {"epochs": 1}},
            },
        },
        "vqa": {
            "model": {"mia_d_model": 16, "mia_heads": 2, "mia_d_ff": 32},
            "train": {"val_batch_size": 64, "checkpoint_every": 100, "log_every": 5,
                      "device": "cpu"},
            "baselines": {
                "updown": {"model": {"hidden": 16}, "train": {"epochs": 1, "batch_size": 32}},
                "ban": {"model": {"hidden": 16, "glimpses": 1},
                        "train": {"epochs": 1, "batch_size": 32}},
            },
        },
        "evaluation": {"captions": {"metrics": ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR",
                                                "ROUGE_L", "CIDEr"]}},
        "report": {"bootstrap": {"resamples": 200, "confidence": 0.95, "seed": 0},
                   "figures": ["figure4"]},
        # Every table of the paper, with fewer rows: one of each kind of run (grid with the
        # CNN, regions, XE then SCST, each MIA variant's path, VQA Up-Down and BAN with their
        # server runs). Every rule runs; the test DAG (test_workflow_demo) trains every row.
        "tables": {
            "table1": {"runs": [f"{VA}/base", f"{VA}/mia", "captioning/visual_regional_attention/mia"]},
            "table2": {"runs": ["captioning/updown/base", "captioning/updown/mia"]},
            "table3": {"runs": ["vqa/updown/base", "vqa/ban/mia"]},
            "table4": {"runs": [f"{VA}/base", f"{VA}/mia_visual", f"{VA}/mia"]},
            "section3_3_self_attention": {"runs": [f"{VA}/base", f"{VA}/mia"]},
            "figure4_iterations": {"runs": [f"{VA}/mia_n1", f"{VA}/mia"]},
        },
    }


def pins_overlay(world: World, base: str) -> dict:
    """Every download served by the miniature's server and pinned to the miniature's bytes,
    as config.yaml pins the real ones; GloVe by MD5 (as published), its first source dead."""
    downloads = {}
    for key, archive in world.archives.items():
        name = archive.path.name
        downloads[key] = {"urls": [f"{base}/{name}"], "sha256": archive.sha256,
                          "size": archive.size}
    downloads["glove_6b"] = {"urls": [f"{base}/huggingface/glove.6B.zip", f"{base}/glove.6B.zip"],
                             "sha256": None, "md5": world.archives["glove_6b"].md5,
                             "size": world.archives["glove_6b"].size}
    downloads["bottom_up_features"].update(sha256=None, size=None)  # none published
    return {"downloads": downloads}


def _mia(workdir: Path, overlay: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mia", "data", "register", *args,
                           "--configfile", str(overlay)], cwd=workdir, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def paper(tmp_path_factory: pytest.TempPathFactory):
    """The miniature built and served, two copies registered, the paper DAG run on 2 cores."""
    for module in ("mia.features.grid", "mia.evaluation.cli"):
        pytest.importorskip(module)
    world = build_world(tmp_path_factory.mktemp("world"))
    work = tmp_path_factory.mktemp("paper")
    with WorldServer(world) as server:
        overlay = work / "paper_world.yaml"
        weights = write_backbone_weights(work / "resnet152-imagenet-standin.pth")
        overlay.write_text(yaml.safe_dump({**sizes_overlay(weights),
                                           **pins_overlay(world, server.url)}))
        configs = (REPO_ROOT / "config.yaml", overlay)
        train = world.archives["coco_train2014_images"]
        server.state.cut["/train2014.zip"] = [train.size // 3, 1]  # first transfer cut midway
        registered = {
            "karpathy_split": _mia(work, overlay, "karpathy_split",
                                   str(world.archives["karpathy_split"].path)),
            "bottom_up_features": _mia(work, overlay, "bottom_up_features",
                                       str(world.archives["bottom_up_features"].path), "--trust"),
        }
        for key, out in registered.items():
            assert out.returncode == 0, (key, out.stdout, out.stderr)
        plan = snakemake(work, "-n", configfiles=configs, timeout=300)
        started = time.monotonic()
        run = snakemake(work, "--cores", "2", configfiles=configs, timeout=PAPER_DAG_TIMEOUT_S)
        print(f"paper DAG on the miniature: {time.monotonic() - started:.0f} s on 2 cores")
        assert run.returncode == 0, run.stderr[-6000:] + rule_logs(work, NAME)[-8000:]
    return {"world": world, "work": work, "state": server.state, "plan": plan, "run": run,
            "registered": registered, "config": load_config(configs)}


def test_plan_downloads_all_but_the_registered_copies(paper) -> None:
    plan = paper["plan"]
    assert plan.returncode == 0, plan.stderr[-3000:]
    counts = job_counts(plan.stdout + plan.stderr)
    assert counts["download_archive"] == len(ARCHIVES) - len(REGISTERED) - 1  # annotations unused
    for key in ARCHIVES:
        if key != "coco_annotations_2014":
            assert counts[f"extract_{key}"] == 1, key
    assert "extract_coco_annotations_2014" not in counts  # read only by regions.source: boxes
    assert counts["train_concept_detector"] == 1


def test_every_paper_run_evaluated_and_reported(paper) -> None:
    work, config = paper["work"], paper["config"]
    runs = {r for t in config["report"]["tables"] for r in config["tables"][t]["runs"]}
    assert len(runs) == 9  # 7 captioning (2 with SCST), 2 VQA
    for run in runs:
        split = "test" if run.startswith("captioning") else "val"
        assert (work / f"results/{NAME}/runs/{run}/s123/metrics_{split}.json").is_file(), run
    for run in ("vqa/updown/base", "vqa/ban/mia"):
        for split in ("test-dev", "test-std"):
            server = work / f"results/{NAME}/runs/{run}/s123/server_{split}.json"
            assert json.loads(server.read_text()), server
    html = (work / f"reports/{NAME}/index.html").read_text()
    assert "captioning/updown/mia" in html and "vqa/ban/mia" in html


def test_cut_download_resumed_with_range(paper) -> None:
    train = paper["world"].archives["coco_train2014_images"]
    served = [(r, s) for r, s in paper["state"].served("/train2014.zip") if r != "bytes=0-0"]
    assert served[0] == (None, 200)  # cut midway after a third of the bytes
    assert len(served) == 2 and served[1][1] == 206
    offset = int(served[1][0].removeprefix("bytes=").rstrip("-"))
    assert 0 < offset < train.size
    archive = paper["work"] / "resources/downloads/coco_train2014_images.zip"
    assert archive.stat().st_size == train.size
    images = paper["work"] / "resources/coco/images/train2014"
    names = [p.name for p in images.glob("*.jpg")]
    assert names and all(n.startswith("COCO_train2014_") for n in names)


def test_registered_copies_used_without_download(paper) -> None:
    state, work = paper["state"], paper["work"]
    for key in REGISTERED:
        name = ARCHIVES[key]
        assert state.served(f"/{name}") == [], f"{name} was requested from the server"
        archive = work / f"resources/downloads/{key}.zip"
        assert archive.is_symlink()
        assert archive.resolve() == paper["world"].archives[key].path
    lock = yaml.safe_load((work / "resources/downloads/local.lock.yaml").read_text())
    assert lock["bottom_up_features"]["sha256"] == paper["world"].archives[
        "bottom_up_features"].sha256
    assert "sha256" not in lock["karpathy_split"]  # checked against the published pin
    assert "pinned by the user" in paper["registered"]["bottom_up_features"].stdout
    # auto resolved to the TSVs the lab registered
    regions = work / f"results/{NAME}/features/regions_bottom_up_tsv.h5"
    with h5py.File(regions) as f:
        assert f["features"].shape[1:] == (36, 2048)
    html = (work / f"reports/{NAME}/index.html").read_text()
    row = re.search(r'<tr data-input="bottom_up_features">(.*?)</tr>', html, re.S).group(1)
    assert "pinned by the user, not by the publisher" in row
    row = re.search(r'<tr data-input="karpathy_split">(.*?)</tr>', html, re.S).group(1)
    assert "the publisher" in row and "not by the publisher" not in row


def test_dead_source_hands_over_to_the_mirror(paper) -> None:
    assert paper["state"].served("/huggingface/glove.6B.zip")[-1][1] == 404
    log = (paper["work"] / f"results/{NAME}/logs/download/glove_6b.log").read_text()
    assert "served by mirror 2/2" in log and "md5" in log
    assert "%|" not in log  # no progress bar in a log file
    assert (paper["work"] / "resources/coco/glove/glove.6B.300d.txt").is_file()


def test_each_archive_verified_once(paper) -> None:
    """Downloads record a stamp; the extraction trusts it instead of hashing the zip again,
    while a registered copy (verified by `mia data register`) is not hashed again either."""
    logs = paper["work"] / f"results/{NAME}/logs/extract"
    for key in ARCHIVES:
        if key == "coco_annotations_2014":
            continue
        text = (logs / f"{key}.log").read_text()
        assert "verified earlier" in text and "not hashed again" in text, key


def test_concept_detector_trained_once(paper) -> None:
    work = paper["work"]
    logs = work / f"results/{NAME}/logs"
    assert "concepts epoch 1" in (logs / "train_concept_detector.log").read_text()
    for name in ("build_concept_store/grid.log", "build_concept_store/regions.log",
                 "build_test_concept_store/regions.log"):
        assert "concepts epoch" not in (logs / name).read_text(), name
    assert os.path.getsize(work / f"results/{NAME}/features/concept_detector.pt") > 0

"""``features.regions.source: bottom_up`` through the workflow's own rules, on real COCO JPEGs.

config.yaml + config/test_bottom_up.yaml (a small random detector in the public checkpoint's
names) on a raw layout filled from tests/data/coco-mini: the detector's ``pytorch_model.bin`` is
downloaded from 127.0.0.1 with its pinned SHA-256 (rule download_file), the region stores of the
Karpathy images (extract_region_features) and of the evaluation server's test2015 images
(extract_test_region_features) are extracted, and the Karpathy store then trains the paper's
region captioner (Up-Down) and a BAN VQA model for one epoch each. About a minute on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from coco_mini_fixtures import COCO_MINI, write_karpathy, write_vqa
from workflow_support import rule_logs, snakemake

from mia.captioning.config import TrainConfig
from mia.captioning.train import train_captioner
from mia.data.loaders import CaptionData, VQAData
from mia.data.preprocess import (
    CaptionPreprocessConfig,
    VQAPreprocessConfig,
    build_caption_store,
    build_vqa_store,
)
from mia.features.bottom_up import bottom_up_config
from mia.features.bottom_up.weights import random_state_dict, save_hub_checkpoint
from mia.vqa.train import VQATrainConfig, train_vqa

pytestmark = [pytest.mark.slow, pytest.mark.network_local]
NAME = "test_bottom_up"
TEST2015 = 4  # coco-mini images that play the evaluation server's test2015 images


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def served_weights(tmp_path, repo_root):
    """The config's small detector as pytorch_model.bin on http://127.0.0.1:PORT/."""
    settings = yaml.safe_load((repo_root / "config" / "test_bottom_up.yaml").read_text())
    cfg = bottom_up_config(settings["features"]["regions"]["bottom_up"])
    folder = tmp_path / "hub"
    path = save_hub_checkpoint(random_state_dict(cfg.model, seed=5), folder / "pytorch_model.bin")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/pytorch_model.bin", \
        hashlib.sha256(path.read_bytes()).hexdigest()
    httpd.shutdown()


def raw_layout(root: Path) -> None:
    """coco-mini in the raw layout of docs/CONTRACTS.md: Karpathy JSON, images by subset,
    VQA v2 files, and the last images again as the test2015 set the server questions ask about."""
    (root / "karpathy").mkdir(parents=True)
    karpathy = json.loads(write_karpathy(root / "karpathy" / "dataset_coco.json").read_text())
    for image in karpathy["images"]:
        image["filepath"] = "train2014" if image["split"] in ("train", "restval") else "val2014"
        target = root / "images" / image["filepath"] / image["filename"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(COCO_MINI / "images" / image["filename"], target)
    (root / "karpathy" / "dataset_coco.json").write_text(json.dumps(karpathy))
    (root / "vqa").mkdir(parents=True)
    questions, _ = write_vqa(root / "vqa")
    (root / "test2015").mkdir()
    tests = []
    for image in karpathy["images"][-TEST2015:]:
        shutil.copy(COCO_MINI / "images" / image["filename"],
                    root / "test2015" / f"COCO_test2015_{image['cocoid']:012d}.jpg")
        tests.append({"image_id": image["cocoid"], "question": "What is it?",
                      "question_id": image["cocoid"] * 10})
    for subset in ("test2015", "test-dev2015"):
        (root / "vqa" / f"v2_OpenEnded_mscoco_{subset}_questions.json").write_text(json.dumps(
            {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco",
             "data_subtype": subset, "license": {}, "questions": tests}))
    assert questions["train"].exists()


def test_the_rules_extract_bottom_up_regions_that_train_updown_and_ban(tmp_path, repo_root,
                                                                        served_weights):
    url, sha256 = served_weights
    root = tmp_path / "raw"
    raw_layout(root)
    override = tmp_path / "override.yaml"
    override.write_text(yaml.safe_dump({
        "data": {"source": "download", "root": str(root),
                 "downloads_dir": str(tmp_path / "downloads")},
        "downloads": {"bottom_up_frcnn_weights": {"urls": [url], "sha256": sha256, "size": None}}}))
    stores = [f"results/{NAME}/features/regions_bottom_up.h5",
              f"results/{NAME}/features/regions_bottom_up_test2015.h5"]
    work = tmp_path / "work"
    out = snakemake(work, "--cores", "1", *stores, timeout=600, configfiles=(
        repo_root / "config.yaml", repo_root / "config" / "test_bottom_up.yaml", override))
    assert out.returncode == 0, out.stderr[-4000:] + rule_logs(work, NAME)[-4000:]
    assert "download_file" in out.stderr and "extract_region_features" in out.stderr
    log = (work / f"results/{NAME}/logs/extract_region_features.log").read_text()
    assert "bottom-up regions of 33 images: 5 chunks of 8" in log
    assert "images/s, ETA" in log  # progress in the rule's log
    weights = tmp_path / "downloads" / "bottom_up_frcnn_weights.bin"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == sha256

    regions = work / stores[0]
    karpathy = json.loads((root / "karpathy" / "dataset_coco.json").read_text())
    with h5py.File(regions) as f:
        assert f.attrs["source"] == "bottom_up"
        assert list(f["image_ids"][()]) == [im["cocoid"] for im in karpathy["images"]]
        assert f["features"].shape == (33, 20, 256)
        assert ((f["num_boxes"][()] >= 10) & (f["num_boxes"][()] <= 20)).all()
    with h5py.File(work / stores[1]) as f:
        assert sorted(f["image_ids"][()]) == sorted(
            im["cocoid"] for im in karpathy["images"][-TEST2015:])

    # The store trains the region captioner of Table 2 (Up-Down) ...
    captions = build_caption_store(root / "karpathy" / "dataset_coco.json",
                                   tmp_path / "captions.h5", tmp_path / "references",
                                   CaptionPreprocessConfig(count_threshold=1))
    torch.set_num_threads(1)
    data = CaptionData.from_stores(captions, regions)
    cfg = TrainConfig.from_dict({
        "captioner": {"baseline": "updown", "variant": "base", "d_model": 32, "embed_dim": 32,
                      "attention_dim": 16, "feature_dim": 256, "options": {"rnn_size": 32}},
        "epochs": 1, "batch_size": 25, "val_batch_size": 10, "log_every": 0, "device": "cpu",
        "progress": False, "checkpoint_every": 0})
    history = train_captioner(cfg, data, tmp_path / "updown").history
    assert math.isfinite(history[0]["train_loss"]) and "val_cider" in history[0]

    # ... and BAN on the VQA questions of the same images (Table 3)
    vqa_dir = root / "vqa"
    vqa = build_vqa_store({s: vqa_dir / f"v2_OpenEnded_mscoco_{s}2014_questions.json"
                           for s in ("train", "val")},
                          {s: vqa_dir / f"v2_mscoco_{s}2014_annotations.json"
                           for s in ("train", "val")},
                          tmp_path / "vqa.h5", VQAPreprocessConfig(min_answer_count=1))
    vqa_cfg = VQATrainConfig.from_dict({
        "model": {"baseline": "ban", "variant": "base", "feature_dim": 256, "hidden": 16,
                  "embed_dim": 8, "glimpses": 1},
        "epochs": 1, "batch_size": 16, "val_batch_size": 16, "log_every": 0, "device": "cpu",
        "progress": False})
    result = train_vqa(vqa_cfg, VQAData.from_stores(vqa, regions), tmp_path / "ban",
                       val_questions=vqa_dir / "v2_OpenEnded_mscoco_val2014_questions.json",
                       val_annotations=vqa_dir / "v2_mscoco_val2014_annotations.json")
    assert math.isfinite(result.history[0]["train_loss"])
    assert 0 <= result.history[0]["val_accuracy"] <= 100
    assert np.isfinite(result.best_score)

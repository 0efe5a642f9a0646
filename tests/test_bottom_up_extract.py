"""The bottom-up extraction on real coco-mini JPEGs with a small random detector: the store it
writes, batching, bad files, and resuming after a kill or a SIGTERM (cheap: shorter side 160 px).

Run as a script (``python tests/test_bottom_up_extract.py OUT WEIGHTS CONFIG_JSON``) this file
extracts in a fresh process that stops for a minute after its first chunk: the resume tests
kill it there.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch_threads import one_torch_thread

from mia.data.loaders import FeatureTable
from mia.data.store import open_store
from mia.features.bottom_up import BottomUpConfig, extract_bottom_up_features
from mia.features.bottom_up.extract import SOURCE
from mia.features.bottom_up.model import at_least_float32
from mia.features.bottom_up.preprocess import prepare, read_bgr, resized_size
from mia.features.bottom_up.weights import build_model, random_state_dict, save_hub_checkpoint
from mia.features.images import BadImagesError
from mia.features.regions import RegionFeatureConfig, extract_region_features_of

IMAGES = Path(__file__).resolve().parent / "data" / "coco-mini" / "images"
MODEL = {"blocks": [1, 1, 2], "stem_channels": 8, "res2_channels": 16, "bottleneck_channels": 8,
         "rpn_channels": 16, "num_classes": 12, "num_attributes": 6, "rpn_pre_nms_topk": 600,
         "rpn_post_nms_topk": 60}
SETTINGS = {"min_size": 160, "max_size": 267, "min_boxes": 5, "max_boxes": 12, "batch_size": 3,
            "num_workers": 0, "device": "cpu", "chunk_size": 2, "log_every": 1, "model": MODEL}
#: 640x480 twice (one batch), 427x640, 628x640, 634x640, 640x427 twice
NAMES = ["000000041888.jpg", "000000006818.jpg", "000000051191.jpg", "000000058636.jpg",
         "000000060623.jpg", "000000111076.jpg", "000000173350.jpg"]


pytestmark = pytest.mark.usefixtures("one_thread")  # as in the subprocesses


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    cfg = BottomUpConfig(**SETTINGS)
    return save_hub_checkpoint(random_state_dict(cfg.model, seed=11),
                               tmp_path_factory.mktemp("weights") / "pytorch_model.bin")


def images(names=NAMES) -> list[tuple[int, Path]]:
    return [(int(name[:-4]), IMAGES / name) for name in names]


def read(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path) as f:
        return {name: f[name][()] for name in f} | {"attrs": dict(f.attrs)}


@pytest.fixture(scope="module")
def store(tmp_path_factory, weights) -> Path:
    out = tmp_path_factory.mktemp("store") / "regions_bottom_up.h5"
    with one_torch_thread():  # a module fixture is built before the per-test one_thread
        return extract_bottom_up_features(images(), out, BottomUpConfig(**SETTINGS), weights)


def test_the_store_holds_each_images_regions_in_order(store, weights):
    data = read(store)
    attrs = data["attrs"]
    assert attrs["source"] == SOURCE and attrs["padding"] == "zeros" and attrs["max_boxes"] == 12
    assert list(data["image_ids"]) == [i for i, _ in images()]
    assert data["features"].shape == (7, 12, 16 * 8) and data["features"].dtype == np.float16
    assert json.loads(attrs["class_names"]) == [f"class_{i}" for i in range(12)]
    assert len(json.loads(attrs["attribute_names"])) == 6
    assert not (store.parent / f"{store.name}.parts").exists()  # parts go once the store is done
    for row, (_, path) in enumerate(images()):
        n = int(data["num_boxes"][row])
        assert 5 <= n <= 12
        height, width = read_bgr(str(path)).shape[:2]
        assert (data["image_w"][row], data["image_h"][row]) == (width, height)
        boxes = data["boxes"][row]
        assert (boxes[:n, 0::2] >= 0).all() and (boxes[:n, 0::2] <= width).all()
        assert (boxes[:n, 1::2] >= 0).all() and (boxes[:n, 1::2] <= height).all()
        assert (boxes[n:] == 0).all() and (data["features"][row, n:] == 0).all()
        assert (data["class_ids"][row, :n] >= 0).all() and (data["class_ids"][row, n:] == -1).all()
        assert ((data["class_scores"][row, :n] > 0) & (data["class_scores"][row, :n] <= 1)).all()
        assert (data["attribute_ids"][row, :n] < 6).all()
    # what the captioning and VQA loaders read: rows past num_boxes masked
    features, mask = FeatureTable(store, in_memory=True, float32=True).gather(np.arange(7))
    assert features.shape == (7, 12, 128) and mask[:, :5].all()
    assert (mask.sum(dim=1).numpy() == data["num_boxes"]).all()
    with open_store(store, "region_features") as f:
        assert "class_ids" in f


def test_a_figure_names_each_region_by_what_the_detector_saw(store):
    from mia.features.region_store import box_names
    from mia.report.attention_maps import BoxLayout, _cell_name

    with h5py.File(store) as f:
        names = box_names(f, 0)
        n = int(f["num_boxes"][0])
        first_class = int(f["class_ids"][0, 0])
        strong = float(f["attribute_scores"][0, 0]) >= 0.1
        attribute = f"attribute_{int(f['attribute_ids'][0, 0])} " if strong else ""
    assert names[0] == f"{attribute}class_{first_class}"
    assert all(names[:n]) and names[n:] == [""] * (12 - n)
    layout = BoxLayout(np.zeros((12, 4)), tuple(names))
    assert _cell_name(layout, 0) == f"region 0 ({names[0]})"
    assert _cell_name(layout, 11 if n < 12 else 0).startswith("region")
    assert _cell_name(BoxLayout(np.zeros((2, 4))), 1) == "region 1"


def test_the_store_as_a_bottom_up_tsv_reads_back_the_same(store, tmp_path):
    from mia.cli import main
    from mia.data.bottomup_tsv import iter_bottomup_tsv
    from mia.features.regions import import_bottomup_tsv

    out = tmp_path / "regions.tsv"
    assert main(["features", "tsv", "--store", str(store), "--out", str(out)]) == 0
    data = read(store)
    rows = list(iter_bottomup_tsv(out, feature_dim=128))
    assert [r.image_id for r in rows] == list(data["image_ids"])
    assert [r.num_boxes for r in rows] == list(data["num_boxes"])
    back = import_bottomup_tsv([out], tmp_path / "back.h5",
                               RegionFeatureConfig(num_boxes=12, feature_dim=128))
    again = read(back)
    for name in ("image_ids", "features", "boxes", "num_boxes", "image_w", "image_h"):
        assert np.array_equal(again[name], data[name]), name


def test_batched_images_get_the_regions_they_get_alone(store, weights, tmp_path):
    alone = extract_bottom_up_features(images(), tmp_path / "alone.h5",
                                       BottomUpConfig(**{**SETTINGS, "batch_size": 1}), weights)
    a, b = read(store), read(alone)
    assert np.array_equal(a["num_boxes"], b["num_boxes"])
    assert np.array_equal(a["class_ids"], b["class_ids"])
    assert np.allclose(a["boxes"], b["boxes"], rtol=0, atol=1e-3)
    assert np.allclose(a["features"].astype(np.float32), b["features"].astype(np.float32),
                       rtol=2e-3, atol=1e-3)


def test_the_extractor_is_the_model_then_the_rule(store, weights):
    """Row 0 by hand: the float32 model on the prepared image, the rule on its outputs."""
    from mia.features.bottom_up.extract import select_regions

    cfg = BottomUpConfig(**SETTINGS)
    model = build_model(cfg.model, weights)
    bgr = read_bgr(str(images()[0][1]))
    x = prepare(bgr, cfg.min_size, cfg.max_size, cfg.model.pixel_mean)
    assert tuple(x.shape[1:]) == resized_size(480, 640, 160, 267) == (160, 213)
    det = model(x[None], [(160, 213)])[0]
    keep, boxes, labels = select_regions([det], [(160, 213)], [(480, 640)], cfg)[0]
    data = read(store)
    n = int(data["num_boxes"][0])
    assert n == len(keep)
    assert np.allclose(data["boxes"][0, :n], boxes[keep].numpy(), atol=1e-3)
    assert np.allclose(data["features"][0, :n].astype(np.float32), det.features[keep].numpy(),
                       rtol=2e-3, atol=1e-3)
    assert np.array_equal(data["class_ids"][0, :n], labels.class_ids)
    # scale per axis: 640/213 and 480/160
    assert np.allclose(boxes[keep].numpy(), det.boxes[keep].numpy() * [640 / 213, 3, 640 / 213, 3],
                       rtol=1e-6)


def test_a_bad_image_is_named_or_skipped(tmp_path, weights):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes((IMAGES / NAMES[0]).read_bytes()[:3000])  # a truncated JPEG
    items = [*images(NAMES[:2]), (99, broken)]
    with pytest.raises(BadImagesError, match=r"image_id 99: .*broken\.jpg"):
        extract_bottom_up_features(items, tmp_path / "fail.h5", BottomUpConfig(**SETTINGS),
                                   weights)
    assert not (tmp_path / "fail.h5").exists()
    out = extract_bottom_up_features(items, tmp_path / "skip.h5",
                                     BottomUpConfig(**{**SETTINGS, "skip_bad_images": True}),
                                     weights)
    data = read(out)
    assert list(data["image_ids"]) == [int(n[:-4]) for n in NAMES[:2]]
    skipped = json.loads(data["attrs"]["skipped_images"])
    assert [s["image_id"] for s in skipped] == [99] and "broken.jpg" in skipped[0]["file"]


def test_a_missing_weights_file_says_where_weights_come_from(tmp_path):
    with pytest.raises(FileNotFoundError, match="downloads.bottom_up_frcnn_weights"):
        extract_bottom_up_features(images(NAMES[:1]), tmp_path / "x.h5",
                                   BottomUpConfig(**SETTINGS), tmp_path / "absent.bin")


def test_the_regions_source_dispatches_and_checks_the_store_width(tmp_path, weights):
    with pytest.raises(ValueError, match="must equal features.regions.bottom_up.max_boxes"):
        RegionFeatureConfig(source="bottom_up", num_boxes=36, bottom_up=SETTINGS)
    cfg = RegionFeatureConfig(source="bottom_up", num_boxes=12, bottom_up=SETTINGS)
    out = extract_region_features_of(images(NAMES[:1]), cfg, tmp_path / "r.h5", weights=weights)
    assert read(out)["attrs"]["source"] == SOURCE


# --------------------------------------------------------------------------- resume


def _start_child(tmp_path: Path, weights: Path, settings: dict, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, __file__, str(out), str(weights),
                             json.dumps(settings)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_first_chunk(child: subprocess.Popen, out: Path) -> None:
    first = Path(f"{out}.parts") / "chunk_000000.npz"
    deadline = time.monotonic() + 120
    while not first.exists():
        assert child.poll() is None, child.stdout.read()
        assert time.monotonic() < deadline, "the child wrote no chunk in 2 minutes"
        time.sleep(0.05)


def _resume(out: Path, weights: Path, settings: dict, caplog) -> Path:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mia.features.bottom_up.extract"):
        return extract_bottom_up_features(images(), out, BottomUpConfig(**settings), weights)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_stopped_job_resumes_after_its_last_chunk(tmp_path, weights, store, how, caplog):
    out = tmp_path / "regions.h5"
    child = _start_child(tmp_path, weights, SETTINGS, out)
    _wait_for_first_chunk(child, out)
    child.send_signal(getattr(signal, how))
    code = child.wait(timeout=120)
    log = child.stdout.read()
    if how == "SIGTERM":  # stops after the batch at hand, exits 75: "try again"
        assert code == 75, log
        assert "stopped on a signal" in log
    else:
        assert code == -signal.SIGKILL
    assert not out.exists()
    resumed = _resume(out, weights, SETTINGS, caplog)
    assert "resuming after" in caplog.text and "finished chunks" in caplog.text
    a, b = read(resumed), read(store)
    for name in ("image_ids", "num_boxes", "class_ids", "attribute_ids", "boxes", "features"):
        assert np.array_equal(a[name], b[name]), name


def test_a_changed_config_starts_over(tmp_path, weights, caplog, monkeypatch):
    import mia.features.bottom_up.extract as extract

    out = tmp_path / "regions.h5"
    write = extract._Parts.write

    def write_then_crash(self, chunk, *args, **kwargs):
        write(self, chunk, *args, **kwargs)
        raise RuntimeError("crash after the first chunk")

    monkeypatch.setattr(extract._Parts, "write", write_then_crash)
    with pytest.raises(RuntimeError, match="crash"):
        extract_bottom_up_features(images(), out, BottomUpConfig(**SETTINGS), weights)
    monkeypatch.setattr(extract._Parts, "write", write)
    assert (Path(f"{out}.parts") / "chunk_000000.npz").exists() and not out.exists()
    changed = {**SETTINGS, "score_threshold": 0.5}
    _resume(out, weights, changed, caplog)
    assert "changed since these checkpoints" in caplog.text
    assert "resuming after" not in caplog.text
    fresh = extract_bottom_up_features(images(), tmp_path / "fresh.h5",
                                       BottomUpConfig(**changed), weights)
    assert np.array_equal(read(out)["features"], read(fresh)["features"])


# --------------------------------------------------------------------------- bf16


def test_bf16_keeps_region_features_within_a_few_percent(weights):
    """The CUDA path's precision, checked with CPU autocast: res4 and res5 in bf16 for the same
    proposals, pooling coordinates and classifiers in float32 (as the model does under autocast).
    """
    cfg = BottomUpConfig(**SETTINGS)
    model = build_model(cfg.model, weights)
    x = prepare(read_bgr(str(images()[0][1])), 320, 533, cfg.model.pixel_mean)[None]
    det = model(x, [tuple(x.shape[2:])])[0]
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        features = model.backbone(x)
        pooled = model.roi_heads(features, [det.boxes])
    assert features.dtype == torch.bfloat16 and pooled.dtype == at_least_float32(features.dtype)
    error = (pooled - det.features).norm(dim=1) / det.features.norm(dim=1)
    assert float(error.median()) < 0.03, float(error.median())


def _child() -> None:
    """Extract, pausing up to a minute after the first chunk (the tests stop it there)."""
    import mia.features.bottom_up.extract as extract

    out, weights, settings = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
    write = extract._Parts.write

    def write_then_wait(self, chunk, *args, **kwargs):
        write(self, chunk, *args, **kwargs)
        stopper = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)  # StopSignals
        for _ in range(600 if chunk == 0 else 0):
            if getattr(stopper, "requested", False):
                break  # SIGTERM arrived: let the extractor stop at the end of this batch
            time.sleep(0.1)

    extract._Parts.write = write_then_wait
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(1)
    try:
        extract_bottom_up_features(images(), out, BottomUpConfig(**settings), weights)
    except extract.Preempted as stop:
        print(stop, flush=True)
        raise SystemExit(stop.exit_code) from None


if __name__ == "__main__":
    _child()
    print(asdict(BottomUpConfig(**SETTINGS)))

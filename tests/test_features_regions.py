"""Region features (mia.features.regions): bottom-up TSV import, RoIAlign on given boxes,
detectron2 selection rule, and the one store layout they share.

References: the real TSV format decoded by hand (base64 float32), COCO's xywh boxes from the
JSON, torchvision's public ``roi_align``, and a brute-force re-implementation of the bottom-up
per-class NMS selection.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mia.data.bottomup_tsv import RegionRecord, write_bottomup_tsv
from mia.data.store import load_store
from mia.features.detectron2_backend import (
    Detectron2UnavailableError,
    import_detectron2,
    select_boxes,
)
from mia.features.images import BadImagesError
from mia.features.region_store import grid_boxes
from mia.features.regions import (
    BoxPooler,
    RegionFeatureConfig,
    boxes_from_instances,
    extract_box_features,
    extract_region_features,
    import_bottomup_tsv,
)
from mia.vision import torchvision

DATASETS = {"image_ids", "features", "boxes", "num_boxes", "image_w", "image_h"}


@pytest.fixture(scope="module")
def coco_mini(data_dir: Path) -> Path:
    path = data_dir / "coco-mini"
    if not (path / "instances.json").exists():
        pytest.fail(f"{path}: the coco-mini fixture (33 real COCO images) is missing from "
                    "the checkout; restore tests/data/coco-mini from git")
    return path


@pytest.fixture(scope="module")
def instances(coco_mini: Path) -> dict:
    return json.loads((coco_mini / "instances.json").read_text())


@pytest.fixture(scope="module")
def coco_images(coco_mini: Path, instances: dict) -> list[tuple[int, Path]]:
    return [(im["id"], coco_mini / "images" / im["file_name"]) for im in instances["images"]]


def boxes_cfg(**kw) -> RegionFeatureConfig:
    base = dict(source="boxes", backbone="resnet18", pretrained=False, image_size=96,
                max_size=160, roi_size=2, sampling_ratio=2, num_workers=0, device="cpu",
                seed=5, progress=False)
    return RegionFeatureConfig(**{**base, **kw})


def expected_instance_boxes(instances: dict, image_id: int) -> np.ndarray:
    """COCO [x, y, w, h] -> [x1, y1, x2, y2], largest area first (ties: annotation id)."""
    anns = sorted((a for a in instances["annotations"] if a["image_id"] == image_id),
                  key=lambda a: (-a["area"], a["id"]))
    return np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)],
                    dtype=np.float32).reshape(-1, 4)


def decode_tsv(path: Path) -> dict[int, dict]:
    """The TSV decoded by hand: headerless, tab separated, base64 little-endian float32."""
    rows = {}
    for line in path.read_text().splitlines():
        image_id, w, h, n, boxes, feats = line.split("\t")
        n = int(n)
        rows[int(image_id)] = {
            "w": int(w), "h": int(h), "n": n,
            "boxes": np.frombuffer(base64.b64decode(boxes), "<f4").reshape(n, 4),
            "features": np.frombuffer(base64.b64decode(feats), "<f4").reshape(n, -1)}
    return rows


# --------------------------------------------------------------------------- bottom-up TSV


def test_tsv_import_of_real_format_fixture(tmp_path, data_dir, coco_images):
    tsv = data_dir / "bottomup" / "coco_mini_6.tsv"
    ids = [i for i, _ in coco_images][::-1]  # any order the split asks for
    out = import_bottomup_tsv([tsv], tmp_path / "regions.h5", RegionFeatureConfig(progress=False),
                              image_ids=ids)
    store = load_store(out, "region_features")
    truth = decode_tsv(tsv)
    assert list(store["image_ids"]) == ids
    assert store["features"].shape == (len(ids), 36, 2048)
    assert store["features"].dtype == np.float16 and store["boxes"].dtype == np.float32
    for name in ("num_boxes", "image_w", "image_h"):
        assert store[name].dtype == np.int32
    for row, image_id in enumerate(ids):
        t = truth[image_id]
        assert store["num_boxes"][row] == t["n"] == 6
        assert (store["image_w"][row], store["image_h"][row]) == (t["w"], t["h"])
        np.testing.assert_array_equal(store["boxes"][row, :6], t["boxes"])
        np.testing.assert_array_equal(store["features"][row, :6],
                                      t["features"].astype(np.float16))
        assert not store["boxes"][row, 6:].any() and not store["features"][row, 6:].any()
    assert store["attrs"]["source"] == "bottom_up_tsv"


def test_tsv_truncates_to_num_boxes_and_reports_missing_images(tmp_path):
    rng = np.random.default_rng(0)
    records = [RegionRecord(image_id=i, image_w=640, image_h=480, num_boxes=n,
                            boxes=rng.uniform(0, 400, (n, 4)).astype(np.float32),
                            features=rng.normal(size=(n, 8)).astype(np.float32))
               for i, n in ((11, 40), (12, 3))]
    tsv = write_bottomup_tsv(tmp_path / "part.tsv", records)
    cfg = RegionFeatureConfig(feature_dim=8, progress=False)
    store = load_store(import_bottomup_tsv([tsv], tmp_path / "r.h5", cfg))
    assert list(store["image_ids"]) == [11, 12]
    assert list(store["num_boxes"]) == [36, 3]
    np.testing.assert_array_equal(store["boxes"][0], records[0].boxes[:36])
    with pytest.raises(ValueError, match=r"\[13\]"):
        import_bottomup_tsv([tsv], tmp_path / "r2.h5", cfg, image_ids=[11, 12, 13])
    assert not (tmp_path / "r2.h5").exists()


# --------------------------------------------------------------------------- given boxes


def test_boxes_source_on_coco_mini(tmp_path, coco_mini, coco_images, instances):
    images = coco_images[:5]
    out = extract_box_features(images, boxes_from_instances([coco_mini / "instances.json"]),
                               tmp_path / "regions_boxes.h5", boxes_cfg())
    store = load_store(out, "region_features")
    assert store["features"].shape == (5, 36, 512)
    by_id = {im["id"]: im for im in instances["images"]}
    for row, (image_id, _) in enumerate(images):
        expected = expected_instance_boxes(instances, image_id)
        n = store["num_boxes"][row]
        assert n == min(len(expected), 36)
        np.testing.assert_allclose(store["boxes"][row, :n], expected[:36], rtol=0, atol=1e-4)
        w, h = by_id[image_id]["width"], by_id[image_id]["height"]
        assert (store["image_w"][row], store["image_h"][row]) == (w, h)
        # every padding row is a real box (whole image first) with a real feature
        np.testing.assert_allclose(store["boxes"][row, n], [0, 0, w, h])
        np.testing.assert_allclose(store["boxes"][row, n:], grid_boxes(w, h, 36 - n))
        assert (np.abs(store["features"][row].astype(np.float32)).sum(1) > 0).all()
    assert store["attrs"]["padding"] == "whole_image_and_grid"


def test_box_pooling_equals_torchvision_roi_align(coco_images):
    cfg = boxes_cfg(roi_size=3)
    pooler = BoxPooler(cfg)
    pixels = torch.randn(3, 96, 128)
    boxes = np.array([[0, 0, 640, 480], [100.5, 50, 300, 200], [600, 400, 640, 480]], np.float32)
    sx, sy = 128 / 640, 96 / 480
    got = pooler(pixels, boxes, sx, sy)
    with torch.no_grad():
        fmap = pooler.trunk(pixels[None])
        scaled = torch.from_numpy(boxes * np.array([sx, sy, sx, sy], np.float32))
        ref = torchvision.ops.roi_align(fmap, [scaled], output_size=3, spatial_scale=1 / 32,
                                        sampling_ratio=2, aligned=True).mean(dim=(2, 3))
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-5, atol=1e-5)


def test_tsv_and_boxes_stores_look_the_same(tmp_path, data_dir, coco_mini, coco_images):
    ids = [i for i, _ in coco_images[:3]]
    tsv = import_bottomup_tsv([data_dir / "bottomup" / "coco_mini_6.tsv"], tmp_path / "t.h5",
                              RegionFeatureConfig(progress=False), image_ids=ids)
    box = extract_box_features(coco_images[:3], boxes_from_instances([coco_mini / "instances.json"]),
                               tmp_path / "b.h5", boxes_cfg())
    with h5py.File(tsv) as a, h5py.File(box) as b:
        assert set(a) == set(b) == DATASETS
        assert set(a.attrs) == set(b.attrs)
        assert a.attrs["kind"] == b.attrs["kind"] == "region_features"
        for name in DATASETS:
            assert a[name].dtype == b[name].dtype, name
            assert a[name].shape[:2] == b[name].shape[:2], name
            assert a[name].chunks[1:] == b[name].chunks[1:] or name == "features", name
        assert list(a["image_ids"]) == list(b["image_ids"]) == ids


def test_boxes_deterministic_bad_image_and_skip(tmp_path, coco_mini, coco_images):
    boxes = boxes_from_instances([coco_mini / "instances.json"])
    a = extract_box_features(coco_images[:2], boxes, tmp_path / "a.h5", boxes_cfg())
    b = extract_box_features(coco_images[:2], boxes, tmp_path / "b.h5", boxes_cfg())
    assert load_store(a)["features"].tobytes() == load_store(b)["features"].tobytes()

    bad = tmp_path / "not_a_jpeg.jpg"
    bad.write_text("this is not an image")
    images = [coco_images[0], (424242, bad)]
    with pytest.raises(BadImagesError, match="not_a_jpeg.jpg"):
        extract_box_features(images, boxes, tmp_path / "c.h5", boxes_cfg())
    store = load_store(extract_box_features(images, boxes, tmp_path / "d.h5",
                                            boxes_cfg(skip_bad_images=True)))
    assert list(store["image_ids"]) == [coco_images[0][0]]
    assert [s["file"] for s in store["attrs"]["skipped_images"]] == [str(bad)]


def test_region_dispatch_on_demo_world(tmp_path):
    demo = pytest.importorskip("mia.data.demo", reason="mia.data.demo not written yet")
    root = tmp_path / "demo"
    demo.generate_demo_world(root, demo.DemoConfig(num_images=6, image_size=64))
    annotations = [root / "annotations" / f"instances_{s}2014.json" for s in ("train", "val")]
    out = extract_region_features(boxes_cfg(image_size=64), tmp_path / "regions_boxes.h5",
                                  karpathy_json=root / "karpathy" / "dataset_coco.json",
                                  root=root, instances=annotations)
    store = load_store(out)
    karpathy = json.loads((root / "karpathy" / "dataset_coco.json").read_text())["images"]
    assert list(store["image_ids"]) == [im["cocoid"] for im in karpathy]
    merged = {"annotations": [a for p in annotations
                              for a in json.loads(p.read_text())["annotations"]]}
    for row, image_id in enumerate(store["image_ids"]):
        expected = expected_instance_boxes(merged, int(image_id))
        assert store["num_boxes"][row] == len(expected) >= 1
        np.testing.assert_allclose(store["boxes"][row, :len(expected)], expected, atol=1e-4)


def test_region_dispatch_bottom_up_tsv(tmp_path, data_dir, coco_images):
    ids = [i for i, _ in coco_images[:4]]
    (tmp_path / "karpathy").mkdir()
    (tmp_path / "karpathy" / "dataset_coco.json").write_text(json.dumps({"images": [
        {"cocoid": i, "filepath": "val2014", "filename": f"{i}.jpg", "split": "val",
         "sentences": [{"tokens": ["x"], "raw": "X", "sentid": i}]} for i in ids]}))
    tsv_dir = tmp_path / "bottom_up" / "trainval_36"
    tsv_dir.mkdir(parents=True)
    (tsv_dir / "trainval_resnet101_faster_rcnn_genome_36.tsv").symlink_to(
        data_dir / "bottomup" / "coco_mini_6.tsv")
    out = extract_region_features(RegionFeatureConfig(progress=False), tmp_path / "r.h5",
                                  karpathy_json=tmp_path / "karpathy" / "dataset_coco.json",
                                  root=tmp_path)
    assert list(load_store(out)["image_ids"]) == ids


# --------------------------------------------------------------------------- detectron2


def brute_force_selection(boxes, scores, conf, iou_thr, min_b, max_b):
    """The bottom-up rule written out with Python loops (generate_tsv.py's semantics:
    py-faster-rcnn's NMS counts a box's last pixel, and a count within [min_b, max_b] keeps the
    passing boxes in proposal order)."""
    def iou(a, b):
        ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
        iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
        inter = ix * iy
        return inter / ((a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1)
                        * (b[3] - b[1] + 1) - inter)

    n, k = scores.shape
    max_conf = [0.0] * n
    for c in range(k):
        alive = sorted(range(n), key=lambda i: -scores[i, c])
        kept = []
        for i in alive:
            if all(iou(boxes[i], boxes[j]) <= iou_thr for j in kept):
                kept.append(i)
        for i in kept:
            max_conf[i] = max(max_conf[i], float(scores[i, c]))
    passing = [i for i in range(n) if max_conf[i] >= conf]
    if min_b <= len(passing) <= max_b:
        return passing
    order = sorted(range(n), key=lambda i: (-max_conf[i], i))
    return order[:min_b if len(passing) < min_b else max_b]


@pytest.mark.parametrize("min_b,max_b", [(3, 5), (2, 2), (8, 8)])
def test_bottom_up_selection_rule(min_b, max_b):
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(12, 2, generator=gen) * 50
    boxes = torch.cat([xy, xy + 10 + torch.rand(12, 2, generator=gen) * 40], dim=1)
    scores = torch.softmax(torch.randn(12, 6, generator=gen) * 2, dim=1)[:, :5]
    got = select_boxes(boxes, scores, 0.2, 0.3, min_b, max_b).tolist()
    assert got == brute_force_selection(boxes.numpy().astype(float), scores.numpy(), 0.2, 0.3,
                                        min_b, max_b)


def test_detectron2_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "detectron2", None)  # import detectron2 -> ImportError
    with pytest.raises(Detectron2UnavailableError, match="envs/detectron2.yaml"):
        import_detectron2()


@pytest.mark.detectron2
def test_detectron2_extractor_when_installed(tmp_path, coco_images):
    try:
        import detectron2  # noqa: F401
    except ImportError:
        reason = "detectron2 is not installed (not on PyPI; see envs/detectron2.yaml)"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    import os

    config, weights = os.environ.get("MIA_D2_CONFIG"), os.environ.get("MIA_D2_WEIGHTS")
    if not (config and weights):
        reason = "set MIA_D2_CONFIG and MIA_D2_WEIGHTS to a VG Faster R-CNN config and weights"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    cfg = RegionFeatureConfig(source="detectron2", detectron2_config=config,
                              detectron2_weights=weights, progress=False)
    from mia.features.detectron2_backend import extract_detectron2_features

    store = load_store(extract_detectron2_features(coco_images[:2], tmp_path / "d2.h5", cfg))
    assert store["features"].shape == (2, 36, 2048)
    assert (store["num_boxes"] == 36).all()


def _roi_align_kernel(fmap: np.ndarray, box: np.ndarray, r: int, scale: float, s: int
                      ) -> np.ndarray:
    """torchvision's roi_align CPU/CUDA kernel (aligned=True) transcribed point by point:
    points more than one pixel outside the map give 0, others are clamped and interpolated."""
    c, h, w = fmap.shape
    x1, y1, x2, y2 = (float(v) * scale - 0.5 for v in box)
    bin_h, bin_w = (y2 - y1) / r, (x2 - x1) / r
    out = np.zeros((c, r, r))
    for ph in range(r):
        for pw in range(r):
            acc = np.zeros(c)
            for iy in range(s):
                y = y1 + ph * bin_h + (iy + 0.5) * bin_h / s
                for ix in range(s):
                    x = x1 + pw * bin_w + (ix + 0.5) * bin_w / s
                    if y < -1.0 or y > h or x < -1.0 or x > w:
                        continue
                    yy, xx = max(y, 0.0), max(x, 0.0)
                    y_low, x_low = int(yy), int(xx)
                    if y_low >= h - 1:
                        y_high = y_low = h - 1
                        yy = float(y_low)
                    else:
                        y_high = y_low + 1
                    if x_low >= w - 1:
                        x_high = x_low = w - 1
                        xx = float(x_low)
                    else:
                        x_high = x_low + 1
                    ly, lx = yy - y_low, xx - x_low
                    acc += ((1 - ly) * (1 - lx) * fmap[:, y_low, x_low]
                            + (1 - ly) * lx * fmap[:, y_low, x_high]
                            + ly * (1 - lx) * fmap[:, y_high, x_low]
                            + ly * lx * fmap[:, y_high, x_high])
            out[:, ph, pw] = acc / (s * s)
    return out


def test_vectorised_roi_align_equals_torchvision_and_its_kernel():
    from mia.features.roi_align import roi_align, roi_mean

    torch.manual_seed(0)
    fmap = torch.randn(1, 5, 4, 6, dtype=torch.float64)
    inside = torch.tensor([[0, 0, 192, 128], [10.5, 3, 97, 61], [150, 100, 192, 128],
                           [40, 40, 41, 41], [0, 0, 0, 0]], dtype=torch.float64)
    got = roi_align(fmap, inside, 3, 1 / 32, 2)
    # torchvision's own implementation (its Python fallback on this CPU torch)
    ref = torchvision.ops.roi_align(fmap, [inside], output_size=3, spatial_scale=1 / 32,
                                    sampling_ratio=2, aligned=True)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    # boxes reaching far outside the map: the kernel's rule (0 beyond one pixel) by hand
    outside = torch.tensor([[-100, -80, 60, 40], [150, 100, 400, 300], [-64, 0, -33, 128]],
                           dtype=torch.float64)
    boxes = torch.cat([inside, outside])
    got = roi_align(fmap, boxes, 3, 1 / 32, 2).numpy()
    for i, box in enumerate(boxes.numpy()):
        np.testing.assert_allclose(got[i], _roi_align_kernel(fmap[0].numpy(), box, 3, 1 / 32, 2),
                                   rtol=1e-12, atol=1e-12)
    assert roi_align(fmap, boxes[:0], 3, 1 / 32, 2).shape == (0, 5, 3, 3)
    # Region features are the bins' mean: the weighted-sum form gives the same numbers.
    torch.testing.assert_close(roi_mean(fmap, boxes, 3, 1 / 32, 2),
                               roi_align(fmap, boxes, 3, 1 / 32, 2).mean(dim=(2, 3)),
                               rtol=1e-12, atol=1e-12)

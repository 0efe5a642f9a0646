"""The bottom-up Faster R-CNN's parts against hand-checked values and the kernels they replace.

* RoIPool: against a cell-by-cell port of torchvision's C++ kernel (roi_pool_kernel.cpp), edge
  cases included (exact halves at 1/16 scale, boxes past the map, malformed boxes);
* anchors and the delta transform: values worked out by hand;
* the CPU NMS fallback of mia.vision: against a plain greedy NMS;
* the full-size model has exactly the tensor names and shapes of the public checkpoint, as the
  LXMERT demo's model (whose loader is a strict load_state_dict) has them: recorded in
  tests/data/bottom_up/frcnn_vg_state_dict.json by scripts/compare_bottom_up_reference.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mia.features.bottom_up.boxes import apply_deltas, cell_anchors, clip_boxes, grid_anchors
from mia.features.bottom_up.config import BottomUpConfig, FasterRCNNConfig
from mia.features.bottom_up.roi_pool import roi_pool, roi_pool_reference_semantics
from mia.features.bottom_up.weights import ANCHORS_KEY, expected_shapes
from mia.vision import torchvision

DATA = Path(__file__).resolve().parent / "data" / "bottom_up"
#: Bytes of unc-nlp/frcnn-vg-finetuned's pytorch_model.bin (its Git LFS pointer).
PUBLISHED_BIN_BYTES = 262_398_754


def _c_round(v: float) -> int:
    return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)


def kernel_roi_pool(inp: torch.Tensor, rois: torch.Tensor, size: int, scale: float
                    ) -> torch.Tensor:
    """torchvision/csrc/ops/cpu/roi_pool_kernel.cpp, loop for loop, in the input's dtype."""
    t = inp.dtype
    _, channels, height, width = inp.shape
    out = torch.zeros(len(rois), channels, size, size, dtype=t)
    sc = torch.tensor(scale, dtype=t)
    for n, roi in enumerate(rois):
        b = int(roi[0])
        sw, sh = _c_round(float(roi[1] * sc)), _c_round(float(roi[2] * sc))
        ew, eh = _c_round(float(roi[3] * sc)), _c_round(float(roi[4] * sc))
        bin_h = torch.tensor(max(eh - sh + 1, 1), dtype=t) / torch.tensor(size, dtype=t)
        bin_w = torch.tensor(max(ew - sw + 1, 1), dtype=t) / torch.tensor(size, dtype=t)
        for ph in range(size):
            for pw in range(size):
                hs = int(torch.floor(torch.tensor(ph, dtype=t) * bin_h)) + sh
                he = int(torch.ceil(torch.tensor(ph + 1, dtype=t) * bin_h)) + sh
                ws = int(torch.floor(torch.tensor(pw, dtype=t) * bin_w)) + sw
                we = int(torch.ceil(torch.tensor(pw + 1, dtype=t) * bin_w)) + sw
                hs, he = min(max(hs, 0), height), min(max(he, 0), height)
                ws, we = min(max(ws, 0), width), min(max(we, 0), width)
                for c in range(channels):
                    if he <= hs or we <= ws:
                        continue  # an empty bin is 0
                    out[n, c, ph, pw] = inp[b, c, hs:he, ws:we].max()
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", [3, 7])
def test_roi_pool_equals_the_kernel(dtype, size):
    g = torch.Generator().manual_seed(1)
    features = torch.randn(2, 3, 9, 13, generator=g, dtype=dtype)
    corner = torch.rand(14, 2, generator=g, dtype=dtype) * 200 - 20
    extent = torch.rand(14, 2, generator=g, dtype=dtype) * 150
    batch = torch.randint(0, 2, (14, 1), generator=g).to(dtype)
    rois = torch.cat([batch, corner, corner + extent], dim=1)
    rois[0, 1:] = torch.tensor([8.0, 8.0, 24.0, 24.0])  # x * 1/16 = 0.5, 1.5: C rounds up
    rois[1, 1:] = torch.tensor([0.0, 0.0, 1000.0, 1000.0])  # far past the map: bins clipped
    rois[2, 1:] = torch.tensor([90.0, 60.0, 10.0, 10.0])  # x2 < x1: a 1-cell box
    rois[3, 1:] = torch.tensor([-40.0, -40.0, -8.0, -8.0])  # outside: empty bins are 0
    ours = roi_pool_reference_semantics(features, rois, size, 1 / 16)
    assert torch.equal(ours, kernel_roi_pool(features, rois, size, 1 / 16))
    assert torch.equal(roi_pool(features, rois, size, 1 / 16), ours)
    assert ours[3].abs().sum() == 0


def test_roi_pool_of_a_one_cell_box_is_that_cell():
    features = torch.arange(2 * 5 * 6, dtype=torch.float64).view(1, 2, 5, 6)
    rois = torch.tensor([[0.0, 32.0, 16.0, 32.0, 16.0]])  # cell (row 1, column 2)
    out = roi_pool_reference_semantics(features, rois, 2, 1 / 16)
    assert torch.equal(out[0, :, 0, 0], features[0, :, 1, 2])
    # a 1-cell box has 1 cell of bins: ceil(1/2)=1, so every bin reads the same cell
    assert torch.equal(out[0], features[0, :, 1:2, 2:3].expand(2, 2, 2))


def test_cell_anchors_by_hand():
    anchors = cell_anchors((64, 128), (0.5, 1.0, 2.0))
    assert anchors.dtype == torch.float32 and anchors.shape == (6, 4)
    w = math.sqrt(64 ** 2 / 0.5)  # ratio = h / w, area = size^2
    expected = torch.tensor([-w / 2, -0.5 * w / 2, w / 2, 0.5 * w / 2], dtype=torch.float32)
    assert torch.equal(anchors[0], expected)
    assert torch.equal(anchors[1], torch.tensor([-32.0, -32.0, 32.0, 32.0]))
    assert torch.equal(anchors[4], torch.tensor([-64.0, -64.0, 64.0, 64.0]))


def test_grid_anchors_run_by_row_then_column_then_anchor():
    cell = torch.tensor([[-1.0, -1.0, 1.0, 1.0], [-2.0, -2.0, 2.0, 2.0]])
    grid = grid_anchors(cell, height=2, width=3, stride=16, offset=0.0)
    assert grid.shape == (2 * 3 * 2, 4)
    assert torch.equal(grid[0], torch.tensor([-1.0, -1.0, 1.0, 1.0]))
    assert torch.equal(grid[1], torch.tensor([-2.0, -2.0, 2.0, 2.0]))
    assert torch.equal(grid[2], torch.tensor([15.0, -1.0, 17.0, 1.0]))  # next column
    assert torch.equal(grid[6], torch.tensor([-1.0, 15.0, 1.0, 17.0]))  # next row
    half = grid_anchors(cell, 1, 1, 16, 0.5)
    assert torch.equal(half[0], torch.tensor([7.0, 7.0, 9.0, 9.0]))


def test_deltas_move_and_scale_boxes_by_hand():
    box = torch.tensor([[10.0, 20.0, 30.0, 60.0]], dtype=torch.float64)  # 20 x 40, centre 20, 40
    assert torch.equal(apply_deltas(torch.zeros(1, 4, dtype=torch.float64), box, (1, 1, 1, 1)),
                       box)
    moved = apply_deltas(torch.tensor([[0.5, -0.25, math.log(2), 0.0]], dtype=torch.float64),
                         box, (1, 1, 1, 1))
    # centre (20 + 0.5 * 20, 40 - 0.25 * 40) = (30, 30); width 40, height 40
    assert torch.allclose(moved, torch.tensor([[10.0, 10.0, 50.0, 50.0]], dtype=torch.float64))
    weighted = apply_deltas(torch.tensor([[5.0, 0.0, 0.0, 0.0]], dtype=torch.float64), box,
                            (10, 10, 5, 5))  # 5 / 10 = 0.5 of the width
    assert torch.allclose(weighted[0, 0], torch.tensor(20.0, dtype=torch.float64))
    huge = apply_deltas(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), box.float(), (1, 1, 1, 1))
    assert huge[0, 2] - huge[0, 0] == pytest.approx(20 * 1000 / 16, rel=1e-5)  # clamped
    assert torch.equal(clip_boxes(torch.tensor([[-5.0, 3.0, 700.0, 900.0]]), 600, 640),
                       torch.tensor([[0.0, 3.0, 640.0, 600.0]]))


def greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> list[int]:
    """Sort by score (ties: lower index first), keep a box unless it overlaps a kept one."""
    rows, values = boxes.tolist(), scores.tolist()
    kept: list[int] = []
    for i in sorted(range(len(rows)), key=lambda i: (-values[i], i)):
        x1, y1, x2, y2 = rows[i]
        for j in kept:
            a1, b1, a2, b2 = rows[j]
            inter = max(0.0, min(x2, a2) - max(x1, a1)) * max(0.0, min(y2, b2) - max(y1, b1))
            if inter / ((x2 - x1) * (y2 - y1) + (a2 - a1) * (b2 - b1) - inter) > threshold:
                break
        else:
            kept.append(i)
    return kept


def test_the_nms_fallback_is_greedy_nms_with_stable_ties():
    g = torch.Generator().manual_seed(3)
    corner = torch.rand(1100, 2, generator=g, dtype=torch.float64) * 300
    boxes = torch.cat([corner, corner + 5 + torch.rand(1100, 2, generator=g,
                                                       dtype=torch.float64) * 60], 1)
    scores = torch.randint(0, 40, (1100,), generator=g).double()  # many ties
    kept = torchvision.ops.nms(boxes, scores, 0.5).tolist()
    assert kept == greedy_nms(boxes, scores, 0.5)  # spans two 1024-row blocks


def test_the_full_model_has_the_public_checkpoints_names_and_shapes():
    recorded = json.loads((DATA / "frcnn_vg_state_dict.json").read_text())["shapes"]
    ours = {k: list(v) for k, v in expected_shapes(FasterRCNNConfig()).items()}
    # The reference's BatchNorm2d counts batches; its anchors are a parameter: both in the file.
    counters = {k for k in recorded if k.endswith(".num_batches_tracked")}
    assert set(recorded) - set(ours) == counters | {ANCHORS_KEY}
    assert set(ours) <= set(recorded)
    assert all(recorded[k] == ours[k] for k in ours)
    assert recorded[ANCHORS_KEY] == [12, 4]
    # float32 numbers plus the zip's per-tensor overhead make the published 262,398,754 bytes
    numbers = json.loads((DATA / "frcnn_vg_state_dict.json").read_text())["numel"]
    assert 0 < PUBLISHED_BIN_BYTES - 4 * numbers < 1000 * len(recorded)
    assert ours["roi_heads.box_predictor.cls_score.weight"] == [1601, 2048]
    assert ours["roi_heads.box_predictor.attr_score.weight"] == [401, 512]


def test_configs_refuse_what_cannot_work():
    with pytest.raises(ValueError, match="min_boxes"):
        BottomUpConfig(min_boxes=40, max_boxes=36)
    with pytest.raises(ValueError, match="rpn_post_nms_topk"):
        BottomUpConfig(max_boxes=100, model={"rpn_post_nms_topk": 50})
    with pytest.raises(ValueError, match="unknown key"):
        BottomUpConfig(model={"depth": 101})
    with pytest.raises(ValueError, match="blocks"):
        FasterRCNNConfig(blocks=(3, 4))
    assert BottomUpConfig(model={"blocks": [1, 1, 1]}).model.blocks == (1, 1, 1)


@pytest.mark.gpu
def test_the_fallbacks_equal_torchvisions_compiled_ops():
    """Where torchvision's compiled ops exist (a CUDA machine), our RoIPool and NMS fallbacks
    give exactly their results, on the CPU and on the GPU."""
    from mia.vision import USING_FALLBACK, _nms_reference

    if USING_FALLBACK:
        reason = "torchvision's compiled ops are missing here (CPU-only torch): nothing to compare"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    g = torch.Generator().manual_seed(5)
    features = torch.randn(2, 16, 38, 50, generator=g)
    corner = torch.rand(300, 2, generator=g) * 700
    rois = torch.cat([torch.randint(0, 2, (300, 1), generator=g).float(), corner,
                      corner + torch.rand(300, 2, generator=g) * 300], 1)
    for device in ("cpu", "cuda"):
        f, r = features.to(device), rois.to(device)
        compiled = torchvision.ops.roi_pool(f, r, 14, 1 / 16)
        assert torch.equal(roi_pool_reference_semantics(f, r, 14, 1 / 16), compiled)
    boxes, scores = rois[:, 1:], torch.rand(300, generator=g)
    assert torch.equal(_nms_reference(boxes, scores, 0.7), torchvision.ops.nms(boxes, scores, 0.7))


def test_the_config_check_refuses_a_store_narrower_than_max_boxes(repo_root, tmp_path):
    from mia.config import ConfigError, check_config, load_config

    override = tmp_path / "adaptive.yaml"
    override.write_text("features:\n  regions:\n    source: bottom_up\n"
                        "    bottom_up: {min_boxes: 10, max_boxes: 100}\n")
    config = load_config([repo_root / "config.yaml", override])
    with pytest.raises(ConfigError, match=r"features\.regions\.num_boxes.*must equal features"
                                          r"\.regions\.bottom_up\.max_boxes \(100\)"):
        check_config(config)
    config["features"]["regions"]["num_boxes"] = 100
    check_config(config)  # the adaptive setting: 10 to 100 boxes in a 100-wide store

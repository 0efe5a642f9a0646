"""The selection rule of bottom-up-attention's generate_tsv.py on hand-built score tables.

get_detections_from_im: per-class NMS (py-faster-rcnn's, whose boxes include their last pixel)
over all proposals; max_conf = the best score among the classes a proposal survives; keep
max_conf >= 0.2 in proposal order; fewer than MIN_BOXES or more than MAX_BOXES: the most
confident instead. Each case below is worked out by hand in its comments; the last compares the
batched implementation with generate_tsv.py's loop transcribed into numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mia.features.bottom_up.selection import keep_boxes, legacy_iou, max_confidence, select_boxes
from mia.features.detectron2_backend import select_boxes as detectron2_select_boxes

A = [0.0, 0.0, 10.0, 10.0]
B = [1.0, 1.0, 11.0, 11.0]  # IoU(A, B) = 100/142 with the +1 convention: suppressed at 0.3
C = [100.0, 100.0, 110.0, 110.0]  # apart from the others
D = [0.0, 0.0, 10.0, 10.0]  # A again


def conf(boxes, scores, nms=0.3):
    return max_confidence(torch.tensor([boxes], dtype=torch.float64),
                          torch.tensor([scores], dtype=torch.float64), nms)[0].tolist()


def test_a_proposal_keeps_its_best_score_among_the_classes_it_survives():
    scores = [[0.90, 0.05],   # A: class 0's best -> survives class 0 with 0.90
              [0.80, 0.70],   # B: suppressed by A in class 0, best of class 1 -> 0.70
              [0.10, 0.05],   # C: alone, survives both -> 0.10
              [0.05, 0.60]]   # D: suppressed by A in class 0 and by B in class 1 -> 0
    assert conf([A, B, C, D], scores) == pytest.approx([0.90, 0.70, 0.10, 0.0])


def test_nms_counts_the_last_pixel_as_py_faster_rcnn_does():
    # [0, 9] and [5, 14] (x), same rows: overlap 4 x 9 / (81 + 81 - 36) = 0.286 in continuous
    # coordinates, but 5 x 10 / (100 + 100 - 50) = 0.333 > 0.3 when each box owns its last pixel.
    left, right = [0.0, 0.0, 9.0, 9.0], [5.0, 0.0, 14.0, 9.0]
    assert legacy_iou(torch.tensor([left, right]))[0, 1] == pytest.approx(1 / 3)
    assert conf([left, right], [[0.9], [0.8]]) == pytest.approx([0.9, 0.0])
    assert conf([left, right], [[0.9], [0.8]], nms=0.34) == pytest.approx([0.9, 0.8])


def test_within_bounds_the_passing_boxes_stay_in_proposal_order():
    # max_conf = [0.6, 0.95, 0.1, 0.3]: three pass 0.2; min 2 <= 3 <= max 5 -> proposal order,
    # not by confidence ([1, 0, 3] would be by confidence).
    assert keep_boxes(torch.tensor([0.6, 0.95, 0.1, 0.3]), 0.2, 2, 5).tolist() == [0, 1, 3]


def test_fewer_than_min_boxes_takes_the_most_confident():
    # one passes; min 3 -> the three most confident, best first
    assert keep_boxes(torch.tensor([0.05, 0.5, 0.1, 0.15]), 0.2, 3, 10).tolist() == [1, 3, 2]


def test_more_than_max_boxes_takes_the_most_confident():
    assert keep_boxes(torch.tensor([0.3, 0.9, 0.5, 0.4, 0.6]), 0.2, 1, 3).tolist() == [1, 4, 2]


def test_exactly_min_equals_max_is_in_proposal_order():
    # the trainval_36 setting with exactly 36 passing keeps them as they come
    assert keep_boxes(torch.tensor([0.3, 0.9, 0.1, 0.5]), 0.2, 3, 3).tolist() == [0, 1, 3]


def test_confidence_ties_rank_the_earlier_proposal_first():
    assert keep_boxes(torch.tensor([0.0, 0.4, 0.0, 0.4, 0.0]), 0.5, 4, 4).tolist() == [1, 3, 0, 2]


def test_fewer_proposals_than_min_boxes_keeps_them_all():
    assert keep_boxes(torch.tensor([0.1, 0.3]), 0.2, 36, 36).tolist() == [1, 0]


def test_equal_class_scores_keep_the_earlier_proposal_in_nms():
    # A and D are the same box with the same score: A (earlier) survives, D is suppressed
    assert conf([A, D], [[0.5], [0.5]]) == pytest.approx([0.5, 0.0])


def test_the_whole_rule_and_the_detectron2_source_share_it():
    scores = torch.tensor([[0.90, 0.05], [0.80, 0.70], [0.10, 0.05], [0.05, 0.60]])
    boxes = torch.tensor([A, B, C, D])
    assert select_boxes(boxes, scores, 0.2, 0.3, 1, 10).tolist() == [0, 1]
    assert select_boxes(boxes, scores, 0.2, 0.3, 3, 10).tolist() == [0, 1, 2]
    assert select_boxes(boxes, scores, 0.2, 0.3, 1, 1).tolist() == [0]
    assert detectron2_select_boxes is select_boxes
    apart = torch.tensor([[0.0, 0, 9, 9], [50, 0, 59, 9], [100, 0, 109, 9], [150, 0, 159, 9]])
    one_class = torch.tensor([[0.6], [0.95], [0.1], [0.3]])
    assert select_boxes(apart, one_class, 0.2, 0.3, 2, 5).tolist() == [0, 1, 3]  # not [1, 0, 3]


def py_cpu_nms(dets: np.ndarray, thresh: float) -> list[int]:
    """py-faster-rcnn lib/nms/py_cpu_nms.py's loop (a stable sort for deterministic ties)."""
    x1, y1, x2, y2, scores = dets.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]])
                       + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]])
                       + 1)
        inter = w * h
        order = order[np.where(inter / (areas[i] + areas[order[1:]] - inter) <= thresh)[0] + 1]
    return keep


def generate_tsv_max_conf(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> np.ndarray:
    max_conf = np.zeros(len(boxes))
    for c in range(scores.shape[1]):
        keep = np.array(py_cpu_nms(np.hstack([boxes, scores[:, c:c + 1]]), thresh))
        max_conf[keep] = np.where(scores[keep, c] > max_conf[keep], scores[keep, c],
                                  max_conf[keep])
    return max_conf


def test_batched_images_of_different_sizes_equal_generate_tsv_one_by_one():
    rng = np.random.default_rng(7)
    counts = [40, 25, 33]  # proposals per image: the batch pads to 40
    batch_boxes = np.zeros((3, 40, 4))
    batch_scores = np.zeros((3, 40, 9))
    valid = np.zeros((3, 40), dtype=bool)
    expected = []
    for i, n in enumerate(counts):
        corner = rng.uniform(0, 200, (n, 2))
        boxes = np.concatenate([corner, corner + rng.uniform(5, 90, (n, 2))], 1)
        logits = rng.normal(size=(n, 10)) * 2.5
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        batch_boxes[i, :n], batch_scores[i, :n], valid[i, :n] = boxes, probs[:, :9], True
        expected.append(generate_tsv_max_conf(boxes, probs[:, :9], 0.3))
    got = max_confidence(torch.tensor(batch_boxes), torch.tensor(batch_scores), 0.3,
                         torch.tensor(valid))
    for i, n in enumerate(counts):
        assert np.allclose(got[i, :n].numpy(), expected[i], rtol=0, atol=1e-15)
        assert (got[i, n:] == -1).all()
        for lo, hi in ((10, 100), (5, 8), (20, 20)):
            passing = np.where(expected[i] >= 0.2)[0]
            if len(passing) < lo:
                want = np.argsort(-expected[i], kind="stable")[:lo]
            elif len(passing) > hi:
                want = np.argsort(-expected[i], kind="stable")[:hi]
            else:
                want = passing
            assert keep_boxes(got[i, :n], 0.2, lo, hi).tolist() == want.tolist()

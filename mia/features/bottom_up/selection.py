"""Which proposals become an image's regions: the rule of bottom-up-attention's ``generate_tsv.py``.

``get_detections_from_im`` (peteanderson80/bottom-up-attention, tools/generate_tsv.py):

1. for every object class, NMS at ``TEST.NMS`` (0.3) over ALL proposals with that class's
   scores; a proposal's confidence ``max_conf`` is the highest score among the classes for
   which it survives (0 if it survives none);
2. ``keep = where(max_conf >= conf_thresh)`` (0.2), in proposal order;
3. fewer than ``MIN_BOXES``: the ``MIN_BOXES`` most confident instead; more than ``MAX_BOXES``:
   the ``MAX_BOXES`` most confident (``argsort(max_conf)[::-1]``); otherwise ``keep`` as it is,
   in proposal order (which is the RPN's objectness order).

The boxes are the proposals in the original image's pixels (not the class-regressed boxes), and
the NMS is py-faster-rcnn's, whose boxes include their last pixel: area ``(x2 - x1 + 1) *
(y2 - y1 + 1)``; a box is suppressed when its IoU with a kept one is above the threshold. Like
``generate_tsv.py`` (``dets.astype(np.float32)``) the NMS sees boxes and scores rounded to
float32, whatever the model's dtype: near-certain scores (0.9969744 ...) then tie. Where
``generate_tsv.py`` is unspecified (numpy's default sort is not stable, so the order of equal
values is an accident of the sort) we choose: equal scores of a class keep the earlier proposal
first in NMS, and equal confidences rank the earlier proposal first.

The per-class NMS shares one IoU matrix (the proposals are the same for every class) and runs
for all classes of all images of a batch at once: one greedy step per proposal rank, each step
vectorised over (images x classes), instead of 1,600 NMS calls per image.
"""

from __future__ import annotations

import torch
from torch import Tensor


def legacy_iou(boxes: Tensor) -> Tensor:
    """(..., R, 4) -> (..., R, R) IoU with py-faster-rcnn's ``+ 1`` pixel convention."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    width = (torch.minimum(x2[..., :, None], x2[..., None, :])
             - torch.maximum(x1[..., :, None], x1[..., None, :]) + 1).clamp(min=0)
    height = (torch.minimum(y2[..., :, None], y2[..., None, :])
              - torch.maximum(y1[..., :, None], y1[..., None, :]) + 1).clamp(min=0)
    inter = width * height
    return inter / (areas[..., :, None] + areas[..., None, :] - inter)


def max_confidence(boxes: Tensor, scores: Tensor, nms_threshold: float,
                   valid: Tensor | None = None) -> Tensor:
    """Step 1 of the rule for a batch: ``boxes`` (B, R, 4), ``scores`` (B, R, K) foreground
    class scores, ``valid`` (B, R) real proposals (images with fewer than R are padded).
    Returns ``max_conf`` (B, R); padded rows get -1."""
    batch, rois, classes = scores.shape
    if valid is None:
        valid = torch.ones(batch, rois, dtype=torch.bool, device=scores.device)
    # generate_tsv.py's NMS works on float32 boxes and scores (dets.astype(np.float32))
    over = legacy_iou(boxes.to(torch.float32)) > nms_threshold  # (B, R, R): i suppresses j
    over &= valid[:, None, :]
    ranked = scores.to(torch.float32).masked_fill(~valid[:, :, None], -1.0)
    order = ranked.argsort(dim=1, descending=True, stable=True)  # (B, R, K)
    order = order.permute(0, 2, 1).reshape(batch * classes, rois)  # (B*K, R) by class
    image_of = torch.arange(batch, device=scores.device).repeat_interleave(classes)
    suppressed = torch.zeros(batch * classes, rois, dtype=torch.bool, device=scores.device)
    kept = torch.zeros_like(suppressed)
    lanes = torch.arange(batch * classes, device=scores.device)
    for step in range(rois):
        candidate = order[:, step]  # (B*K,)
        alive = ~suppressed[lanes, candidate] & valid[image_of, candidate]
        kept[lanes, candidate] = alive
        suppressed |= over[image_of, candidate] & alive[:, None]
    kept = kept.view(batch, classes, rois).permute(0, 2, 1)  # (B, R, K)
    best = torch.where(kept, scores, torch.zeros((), dtype=scores.dtype,
                                                 device=scores.device)).amax(dim=2)
    return best.masked_fill(~valid, -1.0)


def keep_boxes(max_conf: Tensor, score_threshold: float, min_boxes: int, max_boxes: int
               ) -> Tensor:
    """Steps 2-3 for one image: indices into its proposals, as ``generate_tsv.py`` orders them."""
    passing = (max_conf >= score_threshold).nonzero().squeeze(1)
    if min_boxes <= len(passing) <= max_boxes:
        return passing
    ranked = max_conf.argsort(descending=True, stable=True)
    return ranked[: min_boxes if len(passing) < min_boxes else max_boxes]


def select_boxes(boxes: Tensor, scores: Tensor, score_threshold: float, nms_threshold: float,
                 min_boxes: int, max_boxes: int) -> Tensor:
    """The whole rule for one image: ``boxes`` (R, 4) proposals in original pixels, ``scores``
    (R, K) foreground class scores -> indices of the kept proposals (see the module)."""
    conf = max_confidence(boxes[None], scores[None], nms_threshold)[0]
    return keep_boxes(conf, score_threshold, min_boxes, max_boxes)

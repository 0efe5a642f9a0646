"""Box arithmetic of the Faster R-CNN: anchors, the delta transform, clipping.

These follow the PyTorch port of the Caffe model (detectron2 as py-bottom-up-attention and the
LXMERT demo use it): boxes are ``x1, y1, x2, y2`` in continuous pixel coordinates (no Caffe
``+ 1``), anchors are centred on ``offset * stride``, and the operations run in the order of the
reference so that float64 results agree bit for bit (tests/test_bottom_up_reference.py).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: The largest log-scale a delta may apply: a 16 px anchor grows to at most 1000 px.
SCALE_CLAMP = math.log(1000.0 / 16)


def cell_anchors(sizes: tuple[float, ...], aspect_ratios: tuple[float, ...]) -> Tensor:
    """(len(sizes) * len(aspect_ratios), 4) anchors centred on (0, 0), sizes outer, ratios inner.

    An anchor of ``size`` and ``ratio`` (height / width) has area ``size**2``. Built in float32
    as the reference builds them (its float64 model converts these float32 values).
    """
    anchors = []
    for size in sizes:
        area = size ** 2.0
        for ratio in aspect_ratios:
            width = math.sqrt(area / ratio)
            height = ratio * width
            anchors.append([-width / 2.0, -height / 2.0, width / 2.0, height / 2.0])
    return torch.tensor(anchors, dtype=torch.float32)


def grid_anchors(cell: Tensor, height: int, width: int, stride: int, offset: float) -> Tensor:
    """Every anchor of an ``height`` x ``width`` map: (height * width * A, 4), ordered by row,
    column, then anchor: the order of the RPN's flattened outputs."""
    shift_x = torch.arange(offset * stride, width * stride, step=stride, dtype=torch.float32,
                           device=cell.device)
    shift_y = torch.arange(offset * stride, height * stride, step=stride, dtype=torch.float32,
                           device=cell.device)
    shift_y, shift_x = torch.meshgrid(shift_y, shift_x, indexing="ij")
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
    return (shifts.view(-1, 1, 4) + cell.view(1, -1, 4)).reshape(-1, 4)


def apply_deltas(deltas: Tensor, boxes: Tensor, weights: tuple[float, float, float, float],
                 scale_clamp: float = SCALE_CLAMP) -> Tensor:
    """Move ``boxes`` (N, 4) by ``deltas`` (N, 4): centre shifts in units of the box size
    (divided by ``weights``), log-scale width/height changes clamped at ``scale_clamp``."""
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[:, 0] / wx
    dy = deltas[:, 1] / wy
    dw = torch.clamp(deltas[:, 2] / ww, max=scale_clamp)
    dh = torch.clamp(deltas[:, 3] / wh, max=scale_clamp)
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    pred_w = torch.exp(dw) * widths
    pred_h = torch.exp(dh) * heights
    return torch.stack((pred_ctr_x - 0.5 * pred_w, pred_ctr_y - 0.5 * pred_h,
                        pred_ctr_x + 0.5 * pred_w, pred_ctr_y + 0.5 * pred_h), dim=1)


def clip_boxes(boxes: Tensor, height: int, width: int) -> Tensor:
    """Clamp x into [0, width] and y into [0, height] (a new tensor)."""
    x = boxes[:, 0::2].clamp(min=0, max=width)
    y = boxes[:, 1::2].clamp(min=0, max=height)
    return torch.stack((x[:, 0], y[:, 0], x[:, 1], y[:, 1]), dim=1)


def nonempty(boxes: Tensor, min_size: float = 0.0) -> Tensor:
    """Boxes wider and taller than ``min_size`` (a boolean mask)."""
    return ((boxes[:, 2] - boxes[:, 0]) > min_size) & ((boxes[:, 3] - boxes[:, 1]) > min_size)

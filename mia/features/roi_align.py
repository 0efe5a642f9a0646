"""RoIAlign (aligned=True) of one image's boxes, vectorised, for machines without torchvision's
compiled ops.

On a CPU-only torch (see :mod:`mia.vision`) ``torchvision.ops.roi_align`` falls back to a Python
implementation whose per-corner ``masked_index`` gathers dominate region extraction (about half
of the demo DAG's region-feature time). This computes the same numbers with one gather per
corner over all sampling points of all boxes.

Semantics are torchvision's ``roi_align(..., aligned=True)`` with a fixed ``sampling_ratio``:
a box ``x1, y1, x2, y2`` (image pixels) starts at ``x1 * scale - 0.5``; each of the
``output_size`` bins is sampled at ``sampling_ratio`` x ``sampling_ratio`` evenly spaced points;
a point further than one pixel outside the map contributes 0; otherwise its coordinates are
clamped into the map and it is bilinearly interpolated; a bin is the mean of its points.
tests/test_features_regions.py checks equality with torchvision's own implementation.

Region features are the MEAN of a box's RoIAlign bins, which is linear in the feature map:
:func:`roi_mean` builds each box's weights over the map's cells (n, H*W) from the sampling
points alone and takes one matrix product with the map, instead of gathering C channels at
every point.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _axis(start: Tensor, length: Tensor, size: int, output_size: int, ratio: int
          ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Sampling coordinates along one axis: (n, output_size * ratio) low/high indices, the
    fraction towards high, and whether each point is inside the map (n boxes)."""
    steps = torch.arange(output_size * ratio, device=start.device, dtype=start.dtype)
    # bin b, sample i -> b + (i + 0.5) / ratio  ==  (k + 0.5) / ratio for k = b * ratio + i
    pos = start[:, None] + (steps[None, :] + 0.5) / ratio * (length[:, None] / output_size)
    inside = (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0.0)
    low = pos.floor().long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    pos = torch.where(at_edge, low.to(pos.dtype), pos)
    frac = pos - low.to(pos.dtype)
    return low, high, frac, inside, pos


def roi_align(fmap: Tensor, boxes: Tensor, output_size: int, spatial_scale: float,
              sampling_ratio: int) -> Tensor:
    """``fmap`` (1, C, H, W), ``boxes`` (n, 4) x1, y1, x2, y2 in image pixels ->
    (n, C, output_size, output_size)."""
    if fmap.dim() != 4 or fmap.shape[0] != 1:
        raise ValueError(f"roi_align expects one image's map (1, C, H, W), got {tuple(fmap.shape)}")
    if sampling_ratio < 1:
        raise ValueError(f"sampling_ratio must be >= 1 (adaptive sampling is not supported), "
                         f"got {sampling_ratio}")
    _, c, h, w = fmap.shape
    n, r, s = boxes.shape[0], output_size, sampling_ratio
    if n == 0:
        return fmap.new_zeros(0, c, r, r)
    b = boxes.to(fmap.dtype) * spatial_scale - 0.5
    y_lo, y_hi, ly, y_in, _ = _axis(b[:, 1], b[:, 3] - b[:, 1], h, r, s)  # (n, r*s)
    x_lo, x_hi, lx, x_in, _ = _axis(b[:, 0], b[:, 2] - b[:, 0], w, r, s)
    flat = fmap[0].reshape(c, h * w)

    def corner(ys: Tensor, xs: Tensor) -> Tensor:  # (n, r*s) each -> (c, n, r*s, r*s)
        index = (ys[:, :, None] * w + xs[:, None, :]).reshape(-1)
        return flat.index_select(1, index).view(c, n, r * s, r * s)

    hy, hx = 1.0 - ly, 1.0 - lx
    value = (corner(y_lo, x_lo) * (hy[:, :, None] * hx[:, None, :])
             + corner(y_lo, x_hi) * (hy[:, :, None] * lx[:, None, :])
             + corner(y_hi, x_lo) * (ly[:, :, None] * hx[:, None, :])
             + corner(y_hi, x_hi) * (ly[:, :, None] * lx[:, None, :]))
    value = value * (y_in[:, :, None] & x_in[:, None, :])  # points outside the map count 0
    # (c, n, r*s, r*s) -> (n, c, r, s, r, s) -> mean over the samples of each bin
    return value.view(c, n, r, s, r, s).permute(1, 0, 2, 3, 4, 5).mean(dim=(3, 5))


def _weights(boxes: Tensor, h: int, w: int, output_size: int, spatial_scale: float,
             sampling_ratio: int, dtype: torch.dtype) -> Tensor:
    """(n, H*W): each box's average bilinear weight on every cell of the map."""
    n, r, s = boxes.shape[0], output_size, sampling_ratio
    b = boxes.to(dtype) * spatial_scale - 0.5
    y_lo, y_hi, ly, y_in, _ = _axis(b[:, 1], b[:, 3] - b[:, 1], h, r, s)  # (n, r*s)
    x_lo, x_hi, lx, x_in, _ = _axis(b[:, 0], b[:, 2] - b[:, 0], w, r, s)
    inside = (y_in[:, :, None] & x_in[:, None, :]).to(dtype)  # (n, P, P)
    weights = torch.zeros(n, h * w, dtype=dtype, device=boxes.device)
    for ys, wy in ((y_lo, 1.0 - ly), (y_hi, ly)):
        for xs, wx in ((x_lo, 1.0 - lx), (x_hi, lx)):
            index = ys[:, :, None] * w + xs[:, None, :]  # (n, P, P)
            weights.scatter_add_(1, index.reshape(n, -1),
                                 (wy[:, :, None] * wx[:, None, :] * inside).reshape(n, -1))
    return weights / (r * s) ** 2


def roi_mean(fmap: Tensor, boxes: Tensor, output_size: int, spatial_scale: float,
             sampling_ratio: int) -> Tensor:
    """``roi_align(...).mean((2, 3))`` of one image's boxes -> (n, C), as one matrix product."""
    if fmap.dim() != 4 or fmap.shape[0] != 1:
        raise ValueError(f"roi_mean expects one image's map (1, C, H, W), got {tuple(fmap.shape)}")
    _, c, h, w = fmap.shape
    weights = _weights(boxes, h, w, output_size, spatial_scale, sampling_ratio, fmap.dtype)
    return weights @ fmap[0].reshape(c, h * w).T


def roi_mean_batch(fmap: Tensor, boxes: Tensor, image_index: Tensor, output_size: int,
                   spatial_scale: float, sampling_ratio: int) -> Tensor:
    """:func:`roi_mean` of boxes from several images at once: ``fmap`` (B, C, H, W), ``boxes``
    (n, 4), ``image_index`` (n,) the image of each box -> (n, C). The same weights, gathered
    per box, so each row equals :func:`roi_mean` of its own image (the demo backbone's
    pre-training pools a whole batch's boxes this way)."""
    if fmap.dim() != 4:
        raise ValueError(f"roi_mean_batch expects maps (B, C, H, W), got {tuple(fmap.shape)}")
    _, c, h, w = fmap.shape
    weights = _weights(boxes, h, w, output_size, spatial_scale, sampling_ratio, fmap.dtype)
    maps = fmap.reshape(fmap.shape[0], c, h * w)[image_index]  # (n, C, H*W)
    return torch.bmm(maps, weights.unsqueeze(2)).squeeze(2)

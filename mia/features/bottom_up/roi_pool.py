"""RoIPool (Fast R-CNN's max pooling of a box into a fixed grid), exactly as torchvision's kernel.

The bottom-up model pools each proposal into 14 x 14 cells with RoIPool, as its Caffe original
did. torchvision's ``roi_pool`` is a compiled op with no Python fallback, and a CPU-only torch
lacks it (see :mod:`mia.vision`); :func:`roi_pool` uses it when present and otherwise
:func:`roi_pool_reference_semantics`, which reproduces the kernel's arithmetic:

* a box ``x1, y1, x2, y2`` (image pixels, the feature dtype) covers map cells
  ``round(x1 * scale) .. round(x2 * scale)`` inclusive (C ``round``: halves away from zero), at
  least one cell;
* bin ``p`` of ``P`` spans ``floor(p * size / P) .. ceil((p + 1) * size / P)`` (exclusive end),
  computed in the feature dtype, shifted to the box start and clipped to the map;
* a bin is the max over its cells; an empty bin (wholly outside the map) is 0.

The max over any rectangle comes from a 2-D sparse table (the max over every aligned
``2^i x 2^j`` block, built once per image): four lookups per bin instead of a loop over cells.
tests/test_bottom_up_model.py checks it against a cell-by-cell port of the C++ kernel.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mia.vision import USING_FALLBACK, torchvision


def roi_pool(features: Tensor, rois: Tensor, output_size: int, spatial_scale: float) -> Tensor:
    """(B, C, H, W) maps and (R, 5) ``batch_index, x1, y1, x2, y2`` rois -> (R, C, P, P)."""
    if not USING_FALLBACK:
        return torchvision.ops.roi_pool(features, rois.to(features.dtype), output_size,
                                        spatial_scale)
    return roi_pool_reference_semantics(features, rois, output_size, spatial_scale)


def _c_round(x: Tensor) -> Tensor:
    """C's ``round``: to nearest, halves away from zero (torch.round sends halves to even)."""
    nearest = torch.round(x)
    trunc = torch.trunc(x)
    return torch.where((x - trunc).abs() == 0.5, trunc + torch.sign(x), nearest)


def _bin_limits(start: Tensor, end: Tensor, bins: int, size: int) -> tuple[Tensor, Tensor]:
    """Clipped [lo, hi) cell ranges of the ``bins`` bins of each roi along one axis: (R, bins)."""
    length = torch.clamp(end - start + 1, min=1)
    bin_size = length.to(start.dtype) / bins  # in the feature dtype, as the kernel's T
    steps = torch.arange(bins, dtype=start.dtype, device=start.device)
    lo = torch.floor(steps[None, :] * bin_size[:, None]).long() + start.long()[:, None]
    hi = torch.ceil((steps[None, :] + 1) * bin_size[:, None]).long() + start.long()[:, None]
    return lo.clamp(0, size), hi.clamp(0, size)


def _log2_floor(n: Tensor) -> Tensor:
    """floor(log2(n)) of positive integers (exact: no float log)."""
    out = torch.zeros_like(n)
    value = n.clone()
    while bool((value > 1).any()):
        more = value > 1
        out += more.long()
        value = torch.where(more, value // 2, value)
    return out


def _sparse_table(fmap: Tensor) -> Tensor:
    """(KH, KW, H, W, C): entry [i, j, h, w] is the max of ``fmap[:, h:h+2^i, w:w+2^j]`` wherever
    that block lies inside the map (other entries are never read)."""
    channels, height, width = fmap.shape
    levels_w = [fmap.permute(1, 2, 0)]  # (H, W, C)
    step = 1
    while 2 * step <= width:
        prev = levels_w[-1]
        cur = prev.clone()
        cur[:, : width - step] = torch.maximum(prev[:, : width - step], prev[:, step:])
        levels_w.append(cur)
        step *= 2
    table = [torch.stack(levels_w)]  # (KW, H, W, C)
    step = 1
    while 2 * step <= height:
        prev = table[-1]
        cur = prev.clone()
        cur[:, : height - step] = torch.maximum(prev[:, : height - step], prev[:, step:])
        table.append(cur)
        step *= 2
    return torch.stack(table)


def _flat_index(k_h: Tensor, k_w: Tensor, h: Tensor, w: Tensor, levels_w: int, height: int,
                width: int) -> Tensor:
    """(n, P) row and (n, P) column lookups -> (n, P, P) indices into the flattened table."""
    level = k_h[:, :, None] * levels_w + k_w[:, None, :]
    rows = h.clamp(max=height - 1)[:, :, None]
    cols = w.clamp(max=width - 1)[:, None, :]
    return (level * height + rows) * width + cols


def roi_pool_reference_semantics(features: Tensor, rois: Tensor, output_size: int,
                                 spatial_scale: float) -> Tensor:
    """torchvision's RoIPool in plain PyTorch (any device, any float dtype): see the module."""
    batch, channels, height, width = features.shape
    rois = rois.to(features.dtype)
    out = features.new_zeros((len(rois), channels, output_size, output_size))
    scale = torch.tensor(spatial_scale, dtype=features.dtype, device=features.device)
    corners = _c_round(rois[:, 1:5] * scale)
    for image in range(batch):
        rows = (rois[:, 0] == image).nonzero().squeeze(1)
        if len(rows) == 0:
            continue
        x1, y1, x2, y2 = corners[rows].unbind(1)
        w_lo, w_hi = _bin_limits(x1, x2, output_size, width)  # (n, P)
        h_lo, h_hi = _bin_limits(y1, y2, output_size, height)
        table = _sparse_table(features[image])  # (KH, KW, H, W, C)
        n_w = table.shape[1]
        flat = table.reshape(-1, channels)
        empty_h, empty_w = h_hi <= h_lo, w_hi <= w_lo
        kh = _log2_floor((h_hi - h_lo).clamp(min=1))
        kw = _log2_floor((w_hi - w_lo).clamp(min=1))
        h_a, h_b = h_lo, (h_hi - (1 << kh)).clamp(min=0)  # two blocks covering [lo, hi)
        w_a, w_b = w_lo, (w_hi - (1 << kw)).clamp(min=0)

        pooled = None
        for h_part in (h_a, h_b):
            for w_part in (w_a, w_b):
                idx = _flat_index(kh, kw, h_part, w_part, n_w, height, width).reshape(-1)
                values = flat.index_select(0, idx)
                pooled = values if pooled is None else torch.maximum(pooled, values)
        pooled = pooled.reshape(len(rows), output_size, output_size, channels)
        empty = empty_h[:, :, None] | empty_w[:, None, :]
        pooled = pooled.masked_fill(empty[..., None], 0)
        out[rows] = pooled.permute(0, 3, 1, 2)
    return out

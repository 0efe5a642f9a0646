"""torchvision, importable on CPU-only torch builds whose torchvision wheel carries CUDA ops.

Why this exists: PyPI's torchvision matching ``torch==2.13.0`` is a CUDA build. Against the CPU
torch its compiled extension does not load, and ``import torchvision`` dies while registering fake
kernels for ``torchvision::nms``/``qnms``. When (and only when) those ops are missing we define
their schemas with a small pure-PyTorch CPU kernel before importing torchvision. Models and
``roi_align`` (through torchvision's own Python fallback) then work unchanged; on a machine with a
proper torchvision nothing here runs. Always import torchvision through this module::

    from mia.vision import torchvision
"""

from __future__ import annotations

import numpy as np
import torch

_FALLBACK_LIBRARY: torch.library.Library | None = None
_NMS_BLOCK = 1024  # IoU rows computed at once by the fallback NMS (1024 x N floats)


def _compiled_ops_present() -> bool:
    try:
        torch.ops.torchvision.nms  # noqa: B018 - attribute lookup is the check
    except (AttributeError, RuntimeError):
        return False
    return True


def _nms_reference(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS: indices of kept boxes, by decreasing score (torchvision's contract: a stable
    descending sort, a box suppressed when its IoU with a kept one is above the threshold).

    Rows of the IoU matrix are computed a block at a time and the greedy sweep runs over numpy
    booleans: 6,000 RPN proposals take tens of milliseconds, not the seconds a Python list of
    36 million booleans took.
    """
    order = scores.argsort(descending=True, stable=True)
    if dets.numel() == 0:
        return order
    boxes = dets[order]
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    removed = np.zeros(len(boxes), dtype=bool)
    keep: list[int] = []
    for start in range(0, len(boxes), _NMS_BLOCK):
        stop = min(start + _NMS_BLOCK, len(boxes))
        rows, cols = slice(start, stop), slice(start, None)  # earlier boxes are decided
        width = (torch.minimum(x2[rows, None], x2[None, cols])
                 - torch.maximum(x1[rows, None], x1[None, cols])).clamp_(min=0)
        height = (torch.minimum(y2[rows, None], y2[None, cols])
                  - torch.maximum(y1[rows, None], y1[None, cols])).clamp_(min=0)
        inter = width.mul_(height)
        union = areas[rows, None] + areas[None, cols] - inter
        over = (inter / union > iou_threshold).numpy()
        for row in range(start, stop):
            if not removed[row]:
                keep.append(row)
                removed[start:] |= over[row - start]
    return order[torch.tensor(keep, dtype=torch.long)]


def _install_fallback() -> None:
    global _FALLBACK_LIBRARY
    lib = torch.library.Library("torchvision", "DEF")
    for name in ("nms", "qnms"):
        lib.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.impl(name, _nms_reference, "CPU")
    _FALLBACK_LIBRARY = lib  # keep a reference: the registration lives as long as the object


def _patch_python_guards(tv) -> None:
    # torchvision.ops.nms asserts the compiled extension before dispatching; our op is registered.
    import torchvision.ops.boxes as boxes

    boxes._assert_has_ops = lambda: None


USING_FALLBACK = not _compiled_ops_present()
if USING_FALLBACK:
    _install_fallback()

import torchvision  # noqa: E402  (must follow the fallback registration)

if USING_FALLBACK:
    _patch_python_guards(torchvision)

__all__ = ["torchvision", "USING_FALLBACK"]

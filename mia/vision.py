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

import torch

_FALLBACK_LIBRARY: torch.library.Library | None = None


def _compiled_ops_present() -> bool:
    try:
        torch.ops.torchvision.nms  # noqa: B018 - attribute lookup is the check
    except (AttributeError, RuntimeError):
        return False
    return True


def _nms_reference(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS: indices of kept boxes, by decreasing score (torchvision's contract)."""
    order = scores.argsort(descending=True)
    if dets.numel() == 0:
        return order
    x1, y1, x2, y2 = dets.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    # Pairwise IoU once, then a cheap greedy sweep over a boolean matrix.
    ix1 = torch.maximum(x1[:, None], x1[None, :])
    iy1 = torch.maximum(y1[:, None], y1[None, :])
    ix2 = torch.minimum(x2[:, None], x2[None, :])
    iy2 = torch.minimum(y2[:, None], y2[None, :])
    inter = (ix2 - ix1).clamp(min=0) * (iy2 - iy1).clamp(min=0)
    iou = inter / (areas[:, None] + areas[None, :] - inter)
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    overlaps = (iou > iou_threshold).tolist()
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= torch.tensor(overlaps[i])
    return torch.tensor(keep, dtype=torch.long)


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

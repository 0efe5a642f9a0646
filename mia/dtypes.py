"""Dtype rules shared by the captioning and VQA packages.

Every model follows its parameters' dtype (float32 for training, float64 in the reference tests,
bf16 under autocast on a GPU). A few reductions (softmax over the vocabulary, the loss) must not
run in bf16, but must not drop a float64 model to float32 either: :func:`at_least_float32`.
"""

from __future__ import annotations

import torch
from torch import Tensor


def at_least_float32(x: Tensor) -> Tensor:
    """``x`` in float32 when it is a lower floating precision (bf16, fp16) or an integer; a
    float64 tensor stays float64 (``.float()`` would silently round it)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))

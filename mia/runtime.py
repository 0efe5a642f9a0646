"""Where and how reproducibly a job runs: the device it computes on, batches moved there, seeds.

Captioning, VQA and feature extraction all need these; they live here, one floor below every
package that uses them, so no task package imports another for its plumbing.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def resolve_device(name: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as torch spells it."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def move_batch(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Every tensor of ``batch`` on ``device`` (non-blocking: pinned host memory overlaps the
    copy with compute); other values as they are."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()}


def seed_everything(seed: int) -> None:
    """Seed every generator that model building, data order and dropout draw from (torch,
    NumPy, Python): the same seed and config give the same run on CPU."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)

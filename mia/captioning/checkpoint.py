"""Atomic checkpoint files and the random-number state an exact resume needs.

A checkpoint is written to ``<name>.tmp-<pid>`` beside the target, fsynced, then renamed over it:
a job killed mid-write (preemption, out of memory, wall-time limit) leaves the previous complete
checkpoint in place, never a truncated one that would crash the restart.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mia.io import atomic_open


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file, then rename it to ``path``."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`atomic_save`, with an error naming the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found; train the model first")
    try:
        # Checkpoints hold only tensors, numbers, strings and numpy RNG state (our own files).
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise ValueError(f"{path}: unreadable checkpoint ({err}); delete it to start over") from err


def rng_state() -> dict[str, Any]:
    """Every generator training draws from: dropout (torch, CUDA), and numpy/python for safety."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

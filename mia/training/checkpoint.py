"""Checkpoint files that load with ``torch.load(weights_only=True)``, and the RNG state in them.

A checkpoint is data, never code: ``torch.load(..., weights_only=False)`` unpickles arbitrary
objects, so a crafted ``model.pt`` (a download, a shared results folder) could run a shell command
the moment it is loaded. Everything saved here is a tensor, a plain dict/list/tuple, a number, a
string or None, which the restricted unpickler accepts; the numpy and Python RNG states are turned
into tensors and lists for that reason. :func:`load_checkpoint` always passes
``weights_only=True``.

Writes go through :func:`mia.io.atomic_open`: a job killed mid-write leaves the previous complete
checkpoint in place, never a truncated one.
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mia.io import atomic_open


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or not one of ours."""


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file, then rename it to ``path``."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with the restricted (weights-only) unpickler; errors name the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found; train the model first")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused to load: it holds objects other than tensors, numbers, strings and "
            "plain containers (a checkpoint of an older mia-repro, or a file that could run code "
            f"when unpickled). Delete it and retrain, or re-save it from trusted code. ({err})"
        ) from err
    except Exception as err:
        raise CheckpointError(f"{path}: unreadable checkpoint ({err}); delete it to start over"
                              ) from err
    if not isinstance(ck, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(ck).__name__}")
    return ck


def rng_state() -> dict[str, Any]:
    """Every generator training draws from (dropout: torch and CUDA; numpy and Python for code
    that uses them), as tensors and lists only."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "internal": list(internal),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

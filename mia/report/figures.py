"""Training curves as PNG files: mean training loss and validation CIDEr-D per epoch.

Stages (XE then SCST) are drawn one after the other on a running epoch axis, so a run's whole
training reads left to right. matplotlib's Agg backend: no display needed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

History = Sequence[Mapping[str, Any]]


def _series(stages: Mapping[str, History], key: str) -> list[tuple[str, list[int], list[float]]]:
    """Per stage: (label, running epochs, values of ``key``), skipping rows without it."""
    out, offset = [], 0
    for stage, rows in stages.items():
        xs = [offset + int(r.get("epoch", i + 1)) for i, r in enumerate(rows) if key in r]
        ys = [float(r[key]) for r in rows if key in r]
        out.append((stage or "train", xs, ys))
        offset += len(rows)
    return out


def plot_training_curves(stages: Mapping[str, History], out_png: str | os.PathLike,
                         title: str) -> Path:
    """Loss (left) and val CIDEr-D (right) per epoch of one run; returns the PNG's path."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, key, label in ((axes[0], "train_loss", "train loss"),
                           (axes[1], "val_cider", "val CIDEr-D")):
        for stage, xs, ys in _series(stages, key):
            ax.plot(xs, ys, marker="o", label=stage)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].legend(loc="best", fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, out_png)


def plot_overlay(histories: Mapping[str, Mapping[str, History]], out_png: str | os.PathLike,
                 title: str, key: str = "val_cider") -> Path:
    """One line per run of ``key`` per epoch (all stages), to compare the runs of one table."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, stages in histories.items():
        xs, ys = [], []
        for _, sx, sy in _series(stages, key):
            xs += sx
            ys += sy
        if xs:
            ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel({"val_cider": "val CIDEr-D", "train_loss": "train loss"}.get(key, key))
    ax.set_title(title, fontsize="medium")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return _save(fig, out_png)


def _save(fig: Any, out_png: str | os.PathLike) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=100)
    plt.close(fig)
    return out

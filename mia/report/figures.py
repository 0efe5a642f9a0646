"""Training curves as PNG files: training loss and the validation score per epoch.

Stages (XE then SCST) are drawn one after the other on a running epoch axis, so a run's whole
training reads left to right; each seed is its own line. matplotlib's Agg backend: no display
needed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from mia.report.costs import VAL_KEYS  # noqa: E402

History = Sequence[Mapping[str, Any]]
Stages = Mapping[str, History]
LABELS = {"val_cider": "val CIDEr-D", "val_accuracy": "val accuracy", "val_overall":
          "val accuracy", "val_score": "val score", "train_loss": "train loss"}


def val_key(histories: Sequence[Stages]) -> str:
    """The validation score these histories hold (``val_cider`` for captioning)."""
    for key in VAL_KEYS:
        if any(key in row for stages in histories for rows in stages.values() for row in rows):
            return key
    return VAL_KEYS[0]


def _series(stages: Stages, key: str) -> list[tuple[str, list[int], list[float]]]:
    """Per stage: (label, running epochs, values of ``key``), skipping rows without it."""
    out, offset = [], 0
    for stage, rows in stages.items():
        xs = [offset + int(r.get("epoch", i + 1)) for i, r in enumerate(rows)
              if r.get(key) is not None]
        ys = [float(r[key]) for r in rows if r.get(key) is not None]
        out.append((stage or "train", xs, ys))
        offset += len(rows)
    return out


def plot_training_curves(seeds: Mapping[int, Stages], out_png: str | os.PathLike,
                         title: str) -> Path:
    """Loss (left) and validation score (right) per epoch of one run, a line per seed and
    stage; returns the PNG's path."""
    key = val_key(list(seeds.values()))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, metric in ((axes[0], "train_loss"), (axes[1], key)):
        for seed, stages in seeds.items():
            for stage, xs, ys in _series(stages, metric):
                label = stage if len(seeds) == 1 else f"{stage}, seed {seed}"
                if xs:
                    ax.plot(xs, ys, marker="o", markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(LABELS.get(metric, metric))
        ax.grid(alpha=0.3)
    if axes[1].lines:
        axes[1].legend(loc="best", fontsize="small")
    fig.suptitle(title)
    # Fixed margins instead of tight_layout, which draws the figure once more (half the time).
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.16, top=0.86, wspace=0.28)
    return save(fig, out_png)


def _mean_curve(seeds: Mapping[int, Stages], key: str) -> tuple[list[int], list[float]]:
    by_epoch: dict[int, list[float]] = {}
    for stages in seeds.values():
        for _, xs, ys in _series(stages, key):
            for x, y in zip(xs, ys, strict=True):
                by_epoch.setdefault(x, []).append(y)
    xs = sorted(by_epoch)
    return xs, [float(np.mean(by_epoch[x])) for x in xs]


def plot_overlay(histories: Mapping[str, Mapping[int, Stages]], out_png: str | os.PathLike,
                 title: str) -> Path:
    """One line per run (mean over its seeds) of the validation score per epoch, to compare the
    runs of one table."""
    key = val_key([s for seeds in histories.values() for s in seeds.values()])
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, seeds in histories.items():
        xs, ys = _mean_curve(seeds, key)
        if xs:
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(LABELS.get(key, key) + (" (mean over seeds)" if any(
        len(s) > 1 for s in histories.values()) else ""))
    ax.set_title(title, fontsize="medium")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return save(fig, out_png)


def save(fig: Any, out_png: str | os.PathLike, dpi: int = 100) -> Path:
    """Write ``fig`` as PNG (creating the folder) and close it."""
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=dpi)
    plt.close(fig)
    return out

"""Training curves as PNG files: training loss and the validation score per epoch.

Stages (XE then SCST) are drawn one after the other on a running epoch axis, so a run's whole
training reads left to right, with a dotted line where a later stage (SCST) starts; each seed is
its own line. Scores are on the paper's scale (the report converts histories before drawing:
val CIDEr-D x100, VQA accuracy in %). Legends sit outside the axes, so they never cover a curve.
matplotlib's Agg backend: no display needed.
"""

from __future__ import annotations

import os
import re
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
LABELS = {"val_cider": "val CIDEr-D (x100)", "val_accuracy": "val accuracy (%)",
          "val_overall": "val accuracy (%)", "val_score": "val score",
          "train_loss": "train loss"}


def mathtext(text: str) -> str:
    """``I_N`` / ``T_N`` (the paper's notation) as matplotlib mathtext, so a title or legend
    shows the subscript instead of the raw underscore."""
    return re.sub(r"(?<![A-Za-z0-9$])([A-Z])_([A-Za-z0-9])(?![A-Za-z0-9])", r"$\1_\2$", text)


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


def stage_starts(stages: Stages) -> dict[str, float]:
    """``{stage: x}`` where each stage after the first starts on the running epoch axis (half
    way between its predecessor's last epoch and its own first)."""
    out, offset = {}, 0
    for i, (stage, rows) in enumerate(stages.items()):
        if i > 0:
            out[stage] = offset + 0.5
        offset += len(rows)
    return out


def _mark_starts(ax: Any, starts: Mapping[str, Sequence[str]]) -> None:
    """A dotted vertical line per stage start, labelled at the top (``SCST starts``)."""
    for text, xs in starts.items():
        for x in sorted(set(xs)):
            ax.axvline(x, color="grey", linestyle=":", linewidth=1.2)
            ax.annotate(text, xy=(x, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(3, -3), textcoords="offset points", va="top", ha="left",
                        fontsize="x-small", color="dimgrey")


def _legend_outside(ax: Any, fig: Any) -> None:
    """The legend to the right of the axes (never over a curve)."""
    if ax.lines:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small",
                  frameon=False, borderaxespad=0.0)


def plot_training_curves(seeds: Mapping[int, Stages], out_png: str | os.PathLike,
                         title: str) -> Path:
    """Loss (left) and validation score (right) per epoch of one run, a line per seed and
    stage, a dotted line where SCST starts; returns the PNG's path."""
    key = val_key(list(seeds.values()))
    fig, axes = plt.subplots(1, 2, figsize=(10.2, 3.2))
    starts: dict[str, list[float]] = {}
    for stages in seeds.values():
        for stage, x in stage_starts(stages).items():
            starts.setdefault(f"{stage.upper()} starts", []).append(x)
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
        _mark_starts(ax, starts)
    _legend_outside(axes[1], fig)
    fig.suptitle(mathtext(title))
    # Fixed margins (room on the right for the legend) instead of a tight bounding box, which
    # draws the figure once more (half the time); the legend's labels here are short.
    fig.subplots_adjust(left=0.07, right=0.85, bottom=0.16, top=0.86, wspace=0.28)
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
                 title: str, notes: Mapping[str, str] | None = None) -> Path:
    """One line per run (mean over its seeds) of the validation score per epoch, to compare the
    runs of one table; a dotted line where a later stage (SCST) starts. ``notes`` adds a few
    words to a run's legend entry (``SCST kept the XE weights``)."""
    key = val_key([s for seeds in histories.values() for s in seeds.values()])
    fig, ax = plt.subplots(figsize=(6, 3.6))
    starts: dict[str, list[float]] = {}
    for label, seeds in histories.items():
        xs, ys = _mean_curve(seeds, key)
        if xs:
            extra = (notes or {}).get(label)
            ax.plot(xs, ys, marker="o", markersize=3,
                    label=mathtext(f"{label} ({extra})" if extra else label))
        for stages in seeds.values():
            for stage, x in stage_starts(stages).items():
                starts.setdefault(f"{stage.upper()} starts", []).append(x)
    ax.set_xlabel("epoch (running over the stages)" if starts else "epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(LABELS.get(key, key) + (" (mean over seeds)" if any(
        len(s) > 1 for s in histories.values()) else ""))
    ax.set_title(mathtext(title), fontsize="medium")
    ax.grid(alpha=0.3)
    _mark_starts(ax, starts)
    _legend_outside(ax, fig)
    return save(fig, out_png, tight=True)


def save(fig: Any, out_png: str | os.PathLike, dpi: int = 100, tight: bool = False) -> Path:
    """Write ``fig`` as PNG (creating the folder) and close it; ``tight`` grows the canvas to
    hold what lies outside the axes (a legend on the right)."""
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    plt.close(fig)
    return out

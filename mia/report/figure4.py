"""Figure 4: every caption metric against MIA's number of iterations N = 1..5, for Visual
Attention (VA) and Concept Attention (CA).

One panel per metric (a metric no run has, SPICE without its jars, gets none: the report says
why); a line per model through its ``mia_n{N}`` runs (mean over seeds, error bars
one sd where there are several), the model's baseline (no MIA) as a dashed horizontal line, and
N = 2, the paper's choice, marked. A run that was not built leaves a gap in its line instead of
an error, so the figure can be drawn while the sweep is still running. When no ``mia_n2`` run
exists, N = 2 is taken from the model's ``mia`` run if the config trains it with N = 2 (the same
configuration), and the figure says so.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mia.report.figures import save  # noqa: E402
from mia.report.paper import PaperResults  # noqa: E402
from mia.report.results import RunResult  # noqa: E402
from mia.report.tables import short_reason  # noqa: E402

FIGURE4_MODELS = ("visual_attention", "concept_attention")
FIGURE4_METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
SHORT = {"visual_attention": "VA", "concept_attention": "CA"}
PAPER_N = 2


@dataclass
class Figure4Data:
    """The numbers drawn: ``mean[(model, metric)]`` is (len(n),) with NaN where a run is missing."""

    n: tuple[int, ...]
    models: tuple[str, ...]
    metrics: tuple[str, ...]
    mean: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    std: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    base: dict[tuple[str, str], float] = field(default_factory=dict)  # NaN when missing
    sources: dict[tuple[str, int], str | None] = field(default_factory=dict)  # run used per N
    missing_reason: dict[str, str] = field(default_factory=dict)  # metric -> why all n/a

    def runs_used(self) -> list[str]:
        return [r for r in self.sources.values() if r]


def figure4_runs(models: Sequence[str] = FIGURE4_MODELS, n_values: Sequence[int] = range(1, 6)
                 ) -> list[str]:
    """The run ids Figure 4 reads (each model's base and mia_n1..n5)."""
    return [f"captioning/{m}/{v}" for m in models
            for v in ["base", *(f"mia_n{n}" for n in n_values)]]


def figure4_data(results: Mapping[str, RunResult],
                 metrics: Sequence[str] = FIGURE4_METRICS,
                 models: Sequence[str] = FIGURE4_MODELS,
                 n_values: Sequence[int] = range(1, 6), mia_iterations: int = PAPER_N
                 ) -> Figure4Data:
    """Collect the sweep from ``results``; missing runs become NaN."""
    data = Figure4Data(tuple(n_values), tuple(models), tuple(metrics))
    for model in models:
        for n in n_values:
            run = f"captioning/{model}/mia_n{n}"
            if run not in results and n == mia_iterations and f"captioning/{model}/mia" in results:
                run = f"captioning/{model}/mia"
            data.sources[(model, n)] = run if run in results else None
    for metric in metrics:
        reasons = []
        for model in models:
            means, stds = [], []
            for n in n_values:
                run = data.sources[(model, n)]
                value = results[run].value(metric) if run else None
                means.append(np.nan if value is None or value.mean is None else value.mean)
                stds.append(np.nan if value is None or value.std is None else value.std)
                if value is not None and value.reason:
                    reasons.append(value.reason)
            data.mean[(model, metric)] = np.array(means)
            data.std[(model, metric)] = np.array(stds)
            base = results.get(f"captioning/{model}/base")
            base_value = base.value(metric).mean if base else None
            data.base[(model, metric)] = np.nan if base_value is None else base_value
        if reasons and all(np.isnan(data.mean[(m, metric)]).all() for m in models):
            data.missing_reason[metric] = reasons[0]
    return data


def drawn_metrics(data: Figure4Data) -> list[str]:
    """The metrics that get a panel: a metric n/a for every run (SPICE without its jars) gets
    none (an empty panel reads as a plotting bug); the report's caption says why it is left out."""
    return [m for m in data.metrics if m not in data.missing_reason]


def plot_figure4(data: Figure4Data, paper: PaperResults, out_png: str | os.PathLike) -> Path:
    """Draw :class:`Figure4Data` (up to 4 panels a row); returns the PNG's path."""
    metrics = drawn_metrics(data) or list(data.metrics)
    cols = min(4, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.9 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    n = np.array(data.n)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        for i, model in enumerate(data.models):
            colour = colours[i % len(colours)]
            mean, std = data.mean[(model, metric)], data.std[(model, metric)]
            label = SHORT.get(model, model)
            ax.errorbar(n, mean, yerr=np.where(np.isnan(std), 0, std), color=colour,
                        marker="o", markersize=4, capsize=2, label=f"{label} w/ MIA")
            if PAPER_N in data.n and not np.isnan(mean[data.n.index(PAPER_N)]):
                ax.plot([PAPER_N], [mean[data.n.index(PAPER_N)]], marker="*", markersize=13,
                        color=colour, markeredgecolor="black", linestyle="none")
            base = data.base[(model, metric)]
            if not np.isnan(base):
                ax.axhline(base, color=colour, linestyle="--", linewidth=1,
                           label=f"{label} baseline")
        ax.axvline(PAPER_N, color="grey", linestyle=":", linewidth=1)
        ax.set_title(paper.header(metric), fontsize="medium")
        ax.set_xticks(n)
        ax.set_xlim(n.min() - 0.4, n.max() + 0.4)
        ax.set_xlabel("iterations N")
        ax.grid(alpha=0.3)
        if metric in data.missing_reason:
            ax.set_yticks([])
            ax.text(0.5, 0.5, f"n/a\n({short_reason(data.missing_reason[metric])})", ha="center",
                    va="center", transform=ax.transAxes, fontsize="small", color="grey")
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for ax in list(axes.flat)[1:len(metrics)]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)),
                   fontsize="small", frameon=False)
    fig.suptitle("Figure 4: metrics against MIA iterations N (star: N = 2, the paper's choice; "
                 "dashed: baseline without MIA)", fontsize="medium")
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    return save(fig, out_png)


"""The paper's tables with our numbers: one row per run, per metric (ours, paper, ours - paper).

Our metrics files are what ``mia evaluate`` writes; their numbers are brought to the paper's scale
(coco-caption scores x100) before the comparison, so a difference reads in the paper's units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mia.report.paper import PaperResults


@dataclass(frozen=True)
class Cell:
    ours: float | None
    paper: float | None

    @property
    def diff(self) -> float | None:
        if self.ours is None or self.paper is None:
            return None
        return self.ours - self.paper


@dataclass(frozen=True)
class Row:
    run: str
    label: str
    cells: tuple[Cell, ...]


@dataclass(frozen=True)
class Table:
    key: str
    title: str
    metrics: tuple[str, ...]
    rows: tuple[Row, ...]


def flatten_metrics(raw: Mapping[str, Any]) -> dict[str, float]:
    """``{metric: value}`` from a metrics JSON.

    Top-level numbers win; numbers in nested mappings (``{"metrics": {...}}``,
    ``{"perAnswerType": {"number": ..}}``) are added under their own key when not already there.
    """
    flat: dict[str, float] = {}
    nested: list[Mapping[str, Any]] = []
    for key, value in raw.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            flat[key] = float(value)
        elif isinstance(value, Mapping):
            nested.append(value)
    for sub in nested:
        for key, value in flatten_metrics(sub).items():
            flat.setdefault(key, value)
    return flat


def _lookup(metrics: Mapping[str, float], name: str) -> float | None:
    if name in metrics:
        return metrics[name]
    lowered = {k.lower(): v for k, v in metrics.items()}
    return lowered.get(name.lower())


def build_table(key: str, spec: Mapping[str, Any], metrics_by_run: Mapping[str, Mapping[str, Any]],
                paper: PaperResults) -> Table:
    """Table ``key`` of the config (``title``, ``task``, ``metrics``, ``runs``).

    ``metrics_by_run[run]`` is the run's metrics JSON (missing runs give empty cells).
    """
    scale = float(paper.scale.get(spec["task"], 1.0))
    metric_names: Sequence[str] = spec["metrics"]
    rows = []
    for run in spec["runs"]:
        ours = flatten_metrics(metrics_by_run.get(run, {}))
        cells = []
        for metric in metric_names:
            value = _lookup(ours, metric)
            cells.append(Cell(None if value is None else value * scale, paper.value(run, metric)))
        rows.append(Row(run, paper.label(run), tuple(cells)))
    return Table(key, spec.get("title", key), tuple(metric_names), tuple(rows))

"""Render ``reports/<name>/index.html``: tables, training curves, run costs, config, versions.

Everything comes from files the workflow already wrote (metrics JSON, ``history.json``,
Snakemake benchmark TSVs), so the report never re-runs anything and a test can render it from
small fake files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2
import yaml

from mia.io import write_text
from mia.report.benchmarks import Benchmark, read_benchmark
from mia.report.environment import software_versions
from mia.report.figures import plot_overlay, plot_training_curves
from mia.report.paper import PaperResults, load_paper_results
from mia.report.tables import Table, build_table

DEVIATIONS = (
    "Splits: the Karpathy split (113,287 / 5,000 / 5,000 images) from dataset_coco.json; the "
    "authors' released code used a random 5k/5k val/test split.",
    "Checkpoint selection: the epoch with the best validation CIDEr-D (greedy decoding); the "
    "released code selected on the test split. The test split is decoded once, at the end.",
    "Optimisation: Adam built once and kept across epochs (the released code rebuilt it every "
    "epoch) and gradient-norm clipping instead of clamping weights at 0.1.",
)


@dataclass(frozen=True)
class RunFiles:
    """One run's inputs to the report: its metrics JSON, and per training stage
    (``xe``, ``scst``; ``""`` for VQA) its ``history.json`` and benchmark TSV."""

    metrics: str
    histories: Mapping[str, str] = field(default_factory=dict)
    benchmarks: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunFiles:
        return cls(str(d["metrics"]), dict(d.get("histories", {})), dict(d.get("benchmarks", {})))


@dataclass(frozen=True)
class RunCost:
    run: str
    stage: str
    benchmark: Benchmark
    epochs: int
    best_epoch: int | None
    best_val_cider: float | None


def _read_json(path: str | os.PathLike, what: str, run: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: {what} of run {run} is missing") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: {what} of run {run} is not valid JSON ({err})") from err


def figure_name(run: str) -> str:
    return run.replace("/", "__") + ".png"


def _best(history: Sequence[Mapping[str, Any]]) -> tuple[int | None, float | None]:
    scored = [r for r in history if r.get("val_cider") is not None]
    if not scored:
        return None, None
    best = max(scored, key=lambda r: float(r["val_cider"]))
    return int(best.get("epoch", 0)), float(best["val_cider"])


def render_report(config: Mapping[str, Any], table_keys: Sequence[str],
                  run_files: Mapping[str, RunFiles | Mapping[str, Any]],
                  out_html: str | os.PathLike, figures_dir: str | os.PathLike,
                  paper: PaperResults | None = None) -> Path:
    """Write the HTML report and its PNG figures; return the HTML's path.

    ``config`` is the workflow config (its ``tables`` define ``table_keys``); ``run_files`` maps
    each run id of those tables to its files.
    """
    paper = paper or load_paper_results()
    files = {run: f if isinstance(f, RunFiles) else RunFiles.from_dict(f)
             for run, f in run_files.items()}
    missing = sorted({r for t in table_keys for r in config["tables"][t]["runs"]} - set(files))
    if missing:
        raise ValueError(f"render_report: no files given for run(s) {missing}")

    metrics = {run: _read_json(f.metrics, "metrics", run) for run, f in files.items()}
    histories = {run: {stage: _read_json(p, "history", run) for stage, p in f.histories.items()}
                 for run, f in files.items()}
    costs = []
    for run, f in files.items():
        for stage, path in f.benchmarks.items():
            history = histories[run].get(stage, [])
            best_epoch, best_cider = _best(history)
            costs.append(RunCost(run, stage or "train", read_benchmark(path), len(history),
                                 best_epoch, best_cider))

    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    out_html = Path(out_html)
    rel = os.path.relpath(figures_dir, out_html.parent)
    run_figures = {}
    for run, stages in histories.items():
        if stages:
            png = plot_training_curves(stages, figures_dir / figure_name(run), paper.label(run))
            run_figures[run] = f"{rel}/{png.name}"

    tables: list[tuple[Table, str | None]] = []
    for key in table_keys:
        spec = config["tables"][key]
        table = build_table(key, spec, metrics, paper)
        overlay = None
        if spec["task"] == "captioning":
            png = plot_overlay({paper.label(r): histories.get(r, {}) for r in spec["runs"]},
                               figures_dir / f"{key}_val_cider.png", spec.get("title", key))
            overlay = f"{rel}/{png.name}"
        tables.append((table, overlay))

    env = jinja2.Environment(loader=jinja2.PackageLoader("mia.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]),
                             undefined=jinja2.StrictUndefined)
    html = env.get_template("report.html.j2").render(
        title=config.get("report", {}).get("title", "MIA reproduction"),
        name=config.get("name", ""),
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),  # noqa: UP017
        tables=tables, run_figures=run_figures, costs=costs, scale=paper.scale,
        paper_notes=paper.notes, deviations=DEVIATIONS, versions=software_versions(),
        config_yaml=yaml.safe_dump(json.loads(json.dumps(dict(config))), sort_keys=False),
        label=paper.label)
    return write_text(out_html, html)

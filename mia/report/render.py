"""Render ``reports/<name>/index.html``: the paper's tables with our numbers, MIA's gains with
confidence intervals, Figures 4 and 5, training curves, run costs, config, versions.

Everything comes from files the workflow already wrote (metrics JSON, per-image scores,
``history.json``, Snakemake benchmark TSVs, Figure 5 PNGs), so the report never re-runs anything
and a test can render it from small fake files. The config's ``report`` section selects what is
shown: ``tables`` (keys of ``tables``), ``figures`` (``figure4``, ``figure5``), ``title`` and the
``bootstrap`` settings of the intervals.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2
import yaml
from markupsafe import Markup, escape

from mia.io import write_text
from mia.report.costs import stage_costs, totals
from mia.report.deviations import deviations
from mia.report.environment import software_versions
from mia.report.figure4 import figure4_data, plot_figure4
from mia.report.figures import plot_overlay, plot_training_curves
from mia.report.gains import GainSettings, gain_tables, mia_gains
from mia.report.inputs import ReportInputs
from mia.report.paper import PaperResults, load_paper_results
from mia.report.results import load_results
from mia.report.tables import Table, build_table, short_reason

FIGURES = ("figure4", "figure5")



@dataclass(frozen=True)
class ReportConfig:
    """``report`` of the workflow config."""

    tables: tuple[str, ...]
    figures: tuple[str, ...] = ()
    title: str = "MIA reproduction"
    bootstrap: GainSettings = field(default_factory=GainSettings)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "report") -> ReportConfig:
        known = {"tables", "figures", "title", "bootstrap", "figure5_images"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; expected some of "
                             f"{sorted(known)}")
        figures = tuple(d.get("figures") or ())
        bad = [f for f in figures if f not in FIGURES]
        if bad:
            raise ValueError(f"{where}.figures: {bad} unknown; choose from {list(FIGURES)}")
        boot = dict(d.get("bootstrap") or {})
        unknown = sorted(set(boot) - {"resamples", "confidence", "seed"})
        if unknown:
            raise ValueError(f"{where}.bootstrap: unknown key(s) {unknown}; expected some of "
                             "['confidence', 'resamples', 'seed']")
        settings = GainSettings(**boot)
        if settings.resamples < 1 or not 0 < settings.confidence < 1:
            raise ValueError(f"{where}.bootstrap: resamples must be >= 1 and confidence in "
                             f"(0, 1), got {boot}")
        return cls(tables=tuple(d.get("tables") or ()), figures=figures,
                   title=str(d.get("title", cls.title)), bootstrap=settings)


def figure_name(run: str) -> str:
    """The training-curve PNG of a run (``captioning__visual_attention__base.png``)."""
    return run.replace("/", "__") + ".png"


def _default_seed(config: Mapping[str, Any]) -> int:
    seeds = (config.get("seeds") or {}).get("default")
    if seeds:
        return int(seeds[0])
    return int(((config.get("captioning") or {}).get("train") or {}).get("seed", 0))


def _breakable(text: str) -> Markup:
    """A run id that may wrap after its slashes (keeps narrow tables narrow)."""
    return Markup("/<wbr>").join(escape(part) for part in str(text).split("/"))


def _table_csv(table: Table) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    header = ["run", "seeds"]
    for c in table.columns:
        header += [f"{c.key} ours", f"{c.key} sd", f"{c.key} paper", f"{c.key} diff"]
    writer.writerow(header)
    for row in table.rows:
        out: list[Any] = [row.run, " ".join(map(str, row.seeds))]
        for cell in row.cells:
            ours = cell.ours.mean if cell.ours.mean is not None else (
                f"n/a ({cell.ours.reason})" if cell.ours.reason else "")
            out += [ours, "" if cell.ours.std is None else cell.ours.std,
                    "" if cell.paper is None else cell.paper,
                    "" if cell.diff is None else round(cell.diff, 6)]
        writer.writerow(out)
    return buf.getvalue()


def _figure5_entries(files: Mapping[str, Sequence[Path]], figures_dir: Path, rel: str
                     ) -> list[dict[str, Any]]:
    """Copy the Figure 5 PNGs (and their JSONs) beside the report; one entry per image, with a
    cell per label in the given order."""
    out_dir = figures_dir / "figure5"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for label, pngs in files.items():
        for i, png in enumerate(pngs):
            png = Path(png)
            if not png.exists():
                raise FileNotFoundError(f"{png}: Figure 5 image ({label}, #{i + 1}) is missing; "
                                        "run `mia visualize attention` for it")
            safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in label)
            name = f"{safe}_{i + 1}_{png.stem}.png"
            shutil.copyfile(png, out_dir / name)
            numbers = None
            if png.with_suffix(".json").exists():
                numbers = json.loads(png.with_suffix(".json").read_text())
            while len(rows) <= i:
                rows.append({"cells": []})
            rows[i]["cells"].append({"label": label, "src": f"{rel}/figure5/{name}",
                                     "numbers": numbers})
    return rows


def render_report(config: Mapping[str, Any], table_keys: Sequence[str] | None,
                  run_files: ReportInputs | Mapping[str, Any], out_html: str | os.PathLike,
                  figures_dir: str | os.PathLike, *,
                  server_files: Mapping[str, Any] | None = None,
                  figure5: Mapping[str, Any] | None = None,
                  vqa_annotations: str | os.PathLike | None = None,
                  tables_dir: str | os.PathLike | None = None,
                  paper_figures_dir: str | os.PathLike | None = None,
                  paper: PaperResults | None = None) -> Path:
    """Write the HTML report and its PNG figures; return the HTML's path.

    ``config`` is the workflow config; ``table_keys`` the tables to show (``None``: its
    ``report.tables``); ``run_files`` the runs' files in the layout of
    :class:`~mia.report.inputs.ReportInputs` (or one). ``figures_dir`` gets the training
    curves; ``paper_figures_dir`` (default: ``figures_dir``) Figure 4 (``figure4/figure4.png``)
    and Figure 5 (``figure5/*.png``); ``tables_dir``, when given, every table as a small
    standalone HTML page and a CSV. Separate folders let ``snakemake --report`` file each under
    its own category.
    """
    paper = paper or load_paper_results()
    settings = ReportConfig.from_dict(config.get("report") or {"tables": list(table_keys or [])})
    table_keys = list(settings.tables if table_keys is None else table_keys)
    inputs = (run_files if isinstance(run_files, ReportInputs) else ReportInputs.from_dict(
        run_files, server_files, figure5, vqa_annotations, default_seed=_default_seed(config)))
    for key in table_keys:
        if key not in config["tables"]:
            raise ValueError(f"report.tables: {key!r} is not under tables: "
                             f"{sorted(config['tables'])}")
    missing = sorted({r for t in table_keys for r in config["tables"][t]["runs"]} -
                     set(inputs.runs))
    if missing:
        raise ValueError(f"render_report: no files given for run(s) {missing}")
    results = load_results(inputs)

    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    paper_dir = Path(paper_figures_dir) if paper_figures_dir is not None else figures_dir
    paper_dir.mkdir(parents=True, exist_ok=True)
    out_html = Path(out_html)
    rel = Path(os.path.relpath(figures_dir, out_html.parent)).as_posix()
    paper_rel = Path(os.path.relpath(paper_dir, out_html.parent)).as_posix()

    tables: list[tuple[Table, str | None]] = []
    vqa_split = str((config.get("vqa") or {}).get("eval_split", "val"))
    for key in table_keys:
        spec = dict(config["tables"][key])
        spec.setdefault("split", vqa_split)
        table = build_table(key, spec, results, paper)
        overlay = None
        if spec["task"] == "captioning":
            curves = {paper.label(r): {s: res.histories for s, res in results[r].seeds.items()}
                      for r in spec["runs"]}
            if any(h for seeds in curves.values() for h in seeds.values()):
                png = plot_overlay(curves, figures_dir / f"{key}_val_cider.png",
                                   spec.get("title", key))
                overlay = f"{rel}/{png.name}"
        tables.append((table, overlay))
    order = [r for t in table_keys for r in config["tables"][t]["runs"]]
    gains = mia_gains(results, paper, settings.bootstrap, order)

    figure4 = None
    if "figure4" in settings.figures:
        iterations = int(((config.get("captioning") or {}).get("model") or {}).get(
            "mia_iterations", 2))
        data = figure4_data(results, mia_iterations=iterations)
        png = plot_figure4(data, paper, paper_dir / "figure4" / "figure4.png")
        figure4 = {"src": f"{paper_rel}/figure4/{png.name}", "data": data}
    figure5_rows = (_figure5_entries(inputs.figure5, paper_dir, paper_rel)
                    if "figure5" in settings.figures else None)

    run_figures = {}
    for run in [*dict.fromkeys([*order, *results])]:
        seeds = {s: r.histories for s, r in results[run].seeds.items() if r.histories}
        if seeds:
            png = plot_training_curves(seeds, figures_dir / figure_name(run), paper.label(run))
            run_figures[run] = f"{rel}/{png.name}"

    costs = stage_costs(inputs, results, config)
    if tables_dir is not None:
        _write_tables(Path(tables_dir), tables, paper)

    html = _environment().get_template("report.html.j2").render(
        title=settings.title, name=config.get("name", ""),
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),  # noqa: UP017
        tables=tables, gain_tables=gain_tables(gains), bootstrap=settings.bootstrap, figures=settings.figures,
        figure4=figure4, figure5=figure5_rows, run_figures=run_figures, costs=costs,
        totals=totals(costs), paper_notes=paper.notes, deviations=deviations(config),
        versions=software_versions(), label=paper.label, seeds={r: sorted(res.seeds) for r, res
                                                               in results.items()},
        config_yaml=yaml.safe_dump(json.loads(json.dumps(dict(config), default=str)),
                                   sort_keys=False))
    return write_text(out_html, html)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("mia.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]),
                             undefined=jinja2.StrictUndefined)
    env.filters["breakable"] = _breakable
    env.filters["short_reason"] = short_reason
    return env


def _write_tables(tables_dir: Path, tables: Sequence[tuple[Table, str | None]],
                  paper: PaperResults) -> None:
    """Each table as ``{key}.html`` (standalone, same look) and ``{key}.csv``."""
    tables_dir.mkdir(parents=True, exist_ok=True)
    template = _environment().get_template("table.html.j2")
    for table, _ in tables:
        write_text(tables_dir / f"{table.key}.html", template.render(table=table,
                                                                     notes=paper.notes))
        write_text(tables_dir / f"{table.key}.csv", _table_csv(table))

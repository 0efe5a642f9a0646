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
import logging
import os
import re
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
from mia.report.costs import job_costs, stage_costs, stage_totals, totals
from mia.report.deviations import deviations
from mia.report.environment import software_versions
from mia.report.figure4 import drawn_metrics, figure4_data, plot_figure4
from mia.report.figures import LABELS, plot_overlay, plot_training_curves
from mia.report.gains import Gain, GainSettings, comparisons, gain_tables, mia_gains
from mia.report.inputs import ReportInputs
from mia.report.paper import PaperResults, load_paper_results
from mia.report.results import RunResult, load_results
from mia.report.tables import Table, build_table, short_reason

log = logging.getLogger(__name__)

FIGURES = ("figure4", "figure5")
#: What the report says once, at the top, when the runs are of the demo world.
DEMO_CONTEXT = (
    "These runs are of the generated demo world (data.source: demo): coloured shapes, a test "
    "split of a few hundred images at most, models a few dozen units wide, a few epochs. The "
    "paper's numbers are printed beside ours for context only: they are not a target here, so "
    "the differences are not coloured. What this page can show is that the pipeline runs end to "
    "end and how MIA's gains compare between baselines on this world, with their intervals.")



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


def _subscripts(text: str) -> Markup:
    """``I_N`` and ``T_N`` (the paper's notation in titles and labels) as I<sub>N</sub>."""
    return Markup(re.sub(r"(?<![A-Za-z0-9])([A-Z])_([A-Za-z0-9])(?![A-Za-z0-9])",
                         r"\1<sub>\2</sub>", str(escape(text))))


def is_demo(config: Mapping[str, Any]) -> bool:
    return (config.get("data") or {}).get("source") == "demo"


def table_title(title: str, demo: bool) -> str:
    """A table's title; on the demo world every title says so (the paper's do not)."""
    return f"{title} (demo world)" if demo and "demo" not in title.lower() else title


def _log_dropped(results: Mapping[str, RunResult], table_keys: Sequence[str],
                 config: Mapping[str, Any], gains: Sequence[Gain]) -> None:
    """Every number the report leaves out, in the log too (the cells and notes say it)."""
    said = set()
    for key in table_keys:
        spec = config["tables"][key]
        for run in spec["runs"]:
            for metric in spec["metrics"]:
                value = results[run].value(metric)
                for seed, why in value.dropped:
                    if (run, seed, why) not in said:
                        said.add((run, seed, why))
                        log.warning("run %s: seed %d left out of its %s cell and interval: %s",
                                    run, seed, metric, why)
                for flag in value.flags:
                    if (run, flag) not in said:
                        said.add((run, flag))
                        log.warning("run %s: %s", run, flag)
    for g in gains:
        if g.interval is None and g.note and "per-item" in g.note:
            log.warning("%s %s: no interval: %s", g.baseline, g.metric, g.note)


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
                  paper: PaperResults | None = None,
                  benchmarks_dir: str | os.PathLike | None = None,
                  data_inputs: Sequence[Mapping[str, Any]] | None = None) -> Path:
    """Write the HTML report and its PNG figures; return the HTML's path.

    ``config`` is the workflow config; ``table_keys`` the tables to show (``None``: its
    ``report.tables``); ``run_files`` the runs' files in the layout of
    :class:`~mia.report.inputs.ReportInputs` (or one). ``figures_dir`` gets the training
    curves; ``paper_figures_dir`` (default: ``figures_dir``) Figure 4 (``figure4/figure4.png``)
    and Figure 5 (``figure5/*.png``); ``tables_dir``, when given, every table as a small
    standalone HTML page and a CSV. Separate folders let ``snakemake --report`` file each under
    its own category. ``benchmarks_dir`` (``results/<name>/benchmarks``) holds every rule's
    benchmark file: the cost of the whole pipeline, stage by stage. ``data_inputs`` lists the
    downloaded inputs with the pin each was verified against (``key``, ``checksum``, ``size``,
    ``pinned_by``: publisher or user, ``source``: a registered local copy), shown in an "Input
    data" section.
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
    demo = is_demo(config)

    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    paper_dir = Path(paper_figures_dir) if paper_figures_dir is not None else figures_dir
    paper_dir.mkdir(parents=True, exist_ok=True)
    out_html = Path(out_html)
    rel = Path(os.path.relpath(figures_dir, out_html.parent)).as_posix()
    paper_rel = Path(os.path.relpath(paper_dir, out_html.parent)).as_posix()

    tables: list[tuple[Table, dict[str, str] | None]] = []
    vqa_split = str((config.get("vqa") or {}).get("eval_split", "val"))
    for key in table_keys:
        spec = dict(config["tables"][key])
        spec.setdefault("split", vqa_split)
        spec["title"] = table_title(str(spec.get("title", key)), demo)
        table = build_table(key, spec, results, paper)
        overlay = None
        if spec["task"] == "captioning":
            curves = {paper.label(r): {s: res.histories for s, res in results[r].seeds.items()}
                      for r in spec["runs"]}
            kept = {paper.label(r): "SCST kept the XE weights" for r in spec["runs"]
                    if any(o.kept_start for o in results[r].stage_outcome("scst"))}
            if any(h for seeds in curves.values() for h in seeds.values()):
                png = plot_overlay(curves, figures_dir / f"{key}_val_cider.png",
                                   spec["title"], notes=kept)
                overlay = {"src": f"{rel}/{png.name}", "caption": _overlay_caption(
                    spec, results, kept)}
        tables.append((table, overlay))
    order = [r for t in table_keys for r in config["tables"][t]["runs"]]
    gains = mia_gains(results, paper, settings.bootstrap, order)
    _log_dropped(results, table_keys, config, gains)

    figure4 = None
    if "figure4" in settings.figures:
        iterations = int(((config.get("captioning") or {}).get("model") or {}).get(
            "mia_iterations", 2))
        data = figure4_data(results, mia_iterations=iterations)
        png = plot_figure4(data, paper, paper_dir / "figure4" / "figure4.png")
        left_out = {m: data.missing_reason[m] for m in data.metrics
                    if m not in drawn_metrics(data)}
        figure4 = {"src": f"{paper_rel}/figure4/{png.name}", "data": data,
                   "left_out": {paper.header(m): r for m, r in left_out.items()}}
    figure5_rows = (_figure5_entries(inputs.figure5, paper_dir, paper_rel)
                    if "figure5" in settings.figures else None)

    run_figures = {}
    for run in [*dict.fromkeys([*order, *results])]:
        seeds = {s: r.histories for s, r in results[run].seeds.items() if r.histories}
        if seeds:
            png = plot_training_curves(seeds, figures_dir / figure_name(run), paper.label(run))
            run_figures[run] = f"{rel}/{png.name}"

    costs = stage_costs(inputs, results, config)
    pipeline = stage_totals(job_costs(benchmarks_dir, config)) if benchmarks_dir else []
    if tables_dir is not None:
        _write_tables(Path(tables_dir), tables, paper, demo)

    html = _environment().get_template("report.html.j2").render(
        title=settings.title, name=config.get("name", ""),
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),  # noqa: UP017
        tables=tables, gain_tables=gain_tables(gains), bootstrap=settings.bootstrap,
        comparisons=comparisons(gains), holm_kept=sum(g.holm for g in gains),
        figures=settings.figures, demo=demo, demo_context=DEMO_CONTEXT,
        figure4=figure4, figure5=figure5_rows, run_figures=run_figures, costs=costs,
        totals=totals(costs), pipeline=pipeline, paper_notes=paper.notes,
        deviations=deviations(config), versions=software_versions(), label=paper.label,
        seeds={r: sorted(res.seeds) for r, res in results.items()}, val_label=LABELS,
        data_inputs=list(data_inputs or []),
        config_yaml=yaml.safe_dump(json.loads(json.dumps(dict(config), default=str)),
                                   sort_keys=False))
    return write_text(out_html, html)


def _overlay_caption(spec: Mapping[str, Any], results: Mapping[str, RunResult],
                     kept: Mapping[str, str]) -> str:
    """What the table's validation-curve figure shows, in words."""
    text = ("Validation CIDEr-D (x100, on the val split) per epoch of every run "
            "of this table, mean over its seeds; the epoch with the best value is the one the "
            "table scores on the test split.")
    if any(len(results[r].seeds[s].histories) > 1 for r in spec["runs"]
           for s in results[r].seeds):
        text += (" XE and SCST epochs run on one axis; the dotted line marks where SCST "
                 "starts (from the XE model).")
    if kept:
        text += (f" {len(kept)} run(s) kept their XE weights (no SCST epoch beat the XE "
                 "model's val CIDEr-D): their table rows are XE numbers.")
    return text


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("mia.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]),
                             undefined=jinja2.StrictUndefined)
    env.filters["breakable"] = _breakable
    env.filters["short_reason"] = short_reason
    env.filters["subscripts"] = _subscripts
    return env


def _write_tables(tables_dir: Path, tables: Sequence[tuple[Table, Any]],
                  paper: PaperResults, demo: bool = False) -> None:
    """Each table as ``{key}.html`` (standalone, same look) and ``{key}.csv``."""
    tables_dir.mkdir(parents=True, exist_ok=True)
    template = _environment().get_template("table.html.j2")
    for table, _ in tables:
        write_text(tables_dir / f"{table.key}.html", template.render(
            table=table, notes=paper.notes, context=demo))
        write_text(tables_dir / f"{table.key}.csv", _table_csv(table))

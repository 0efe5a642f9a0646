"""End to end: the test config's whole DAG through Snakemake on 2 cores, then an incremental rerun.

Runs in a temporary --directory (nothing lands in the checkout). Checks that the report holds the
numbers the run computed (each metrics JSON value, on the paper's x100 scale, appears in the HTML
table), that its figures are PNGs, that `snakemake --report` packages it, and that deleting one
run's metrics re-runs exactly that run's evaluation and the report, nothing else.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from workflow_support import job_counts, snakemake

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUNS = ("visual_attention/base", "visual_attention/mia")

pytestmark = [pytest.mark.slow, pytest.mark.java]


def test_report_holds_the_run_numbers(workflow_run: Path) -> None:
    html = (workflow_run / "reports/test/index.html").read_text()
    for run in RUNS:
        metrics = json.loads((workflow_run / f"results/test/runs/captioning/{run}/"
                              "metrics_test.json").read_text())
        row = re.search(rf'<tr data-run="captioning/{run}">(.*?)</tr>', html, re.S)
        assert row, f"no table row for {run}"
        for name in ("Bleu_1", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"):
            value = metrics.get(name, metrics.get("metrics", {}).get(name))
            assert value is not None, f"{run}: {name} missing from the metrics file"
            assert f">{100 * value:.2f}<" in row.group(1), f"{run}: {name}={value} not in report"
        history = json.loads((workflow_run / f"results/test/runs/captioning/{run}/xe/"
                              "history.json").read_text())
        assert [r["epoch"] for r in history] == [1, 2]
        assert all(r["train_loss"] > 0 for r in history)


def test_report_figures_and_costs(workflow_run: Path) -> None:
    report_dir = workflow_run / "reports/test"
    html = (report_dir / "index.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) >= 3  # one overlay for Table 1 and one per run
    for src in sources:
        assert (report_dir / src).read_bytes().startswith(PNG_MAGIC), src
    costs = re.search(r'<table class="costs">(.*?)</table>', html, re.S).group(1)
    for run in RUNS:
        bench = (workflow_run / f"results/test/benchmarks/train_captioner/{run}/xe.tsv")
        wall = float(bench.read_text().splitlines()[1].split("\t")[0])
        assert f"{wall:.1f}" in costs, f"{run}: benchmark wall time {wall} not in the report"


def test_snakemake_report(workflow_run: Path) -> None:
    out = snakemake(workflow_run, "--report", "report.html", timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    packaged = (workflow_run / "report.html").read_text(errors="replace")
    assert "index.html" in packaged and "table1_val_cider.png" in packaged


def test_rerun_touches_only_affected_jobs(workflow_run: Path) -> None:
    run_dir = workflow_run / "results/test/runs/captioning/visual_attention/mia"
    other = workflow_run / "results/test/runs/captioning/visual_attention/base"
    untouched = [run_dir / "xe/model.pt", run_dir / "captions_test.json",
                 other / "metrics_test.json", workflow_run / "results/test/features/concepts_grid.h5"]
    before = {p: p.stat().st_mtime_ns for p in untouched}
    old_metrics = json.loads((run_dir / "metrics_test.json").read_text())
    (run_dir / "metrics_test.json").unlink()

    # Snakemake does not rebuild a missing intermediate file behind an up-to-date report by
    # itself; asking for it (and `all`) rebuilds it, and the report only because it is now older.
    targets = (str(run_dir.relative_to(workflow_run) / "metrics_test.json"), "all")
    plan = snakemake(workflow_run, "-n", *targets)
    assert plan.returncode == 0, plan.stderr[-3000:]
    expected = {"evaluate_captions": 1, "render_report": 1, "all": 1}
    assert job_counts(plan.stdout + plan.stderr) == expected

    out = snakemake(workflow_run, "--cores", "2", *targets)
    assert out.returncode == 0, out.stderr[-4000:]
    assert job_counts(out.stdout + out.stderr) == expected
    assert json.loads((run_dir / "metrics_test.json").read_text()) == old_metrics
    assert {p: p.stat().st_mtime_ns for p in untouched} == before
    nothing = snakemake(workflow_run, "-n")
    assert "Nothing to be done" in nothing.stdout + nothing.stderr

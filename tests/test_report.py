"""The report renders from small, well-formed run files: tables hold our numbers beside the
paper's with the right differences, figures are real PNGs, costs come from benchmark files."""

from __future__ import annotations

import json
import platform
import re
from pathlib import Path

import pytest

from mia.config import load_config
from mia.report.benchmarks import read_benchmark
from mia.report.paper import load_paper_results
from mia.report.render import figure_name, render_report
from mia.report.tables import build_table, flatten_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BENCH_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
RUNS = ("captioning/visual_attention/base", "captioning/visual_attention/mia")
METRICS = {
    RUNS[0]: {"Bleu_1": 0.61234, "Bleu_2": 0.4, "Bleu_3": 0.3, "Bleu_4": 0.2, "METEOR": 0.18,
              "ROUGE_L": 0.45, "CIDEr": 0.87654},
    RUNS[1]: {"Bleu_1": 0.65, "Bleu_2": 0.43, "Bleu_3": 0.31, "Bleu_4": 0.21, "METEOR": 0.19,
              "ROUGE_L": 0.47, "CIDEr": 0.91},
}


def write_run(root: Path, run: str, metrics: dict, wall_s: float) -> dict:
    run_dir = root / run
    run_dir.mkdir(parents=True)
    (run_dir / "metrics_test.json").write_text(json.dumps(metrics))
    history = [{"epoch": e, "steps": 10, "train_loss": 5.0 - e, "val_cider": 0.1 * e, "lr": 1e-3,
                "wall_s": 2.0, "val_wall_s": 0.5} for e in (1, 2, 3)]
    (run_dir / "history.json").write_text(json.dumps(history))
    (run_dir / "bench.tsv").write_text(BENCH_HEADER + f"{wall_s}\t0:00:12\t321.5\t900.0\t300.0"
                                       "\t310.0\t1.0\t2.0\t95.0\t11.5\n")
    return {"metrics": str(run_dir / "metrics_test.json"),
            "histories": {"xe": str(run_dir / "history.json")},
            "benchmarks": {"xe": str(run_dir / "bench.tsv")}}


@pytest.fixture()
def rendered(tmp_path: Path, repo_root: Path) -> tuple[Path, str]:
    config = load_config([repo_root / "config.yaml", repo_root / "config" / "test.yaml"])
    files = {run: write_run(tmp_path / "runs", run, METRICS[run], 12.25 + i)
             for i, run in enumerate(RUNS)}
    out = render_report(config, ["table1"], files, tmp_path / "report" / "index.html",
                         tmp_path / "report" / "figures")
    return out, out.read_text()


def test_tables_hold_ours_paper_and_difference(rendered: tuple[Path, str]) -> None:
    _, html = rendered
    row = re.search(r'<tr data-run="captioning/visual_attention/base">(.*?)</tr>', html, re.S)
    assert row, "no row for the Visual Attention baseline"
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", row.group(1))
    # Bleu_1: ours 0.61234 x100, paper Table 1 72.6, difference ours - paper
    assert cells[:3] == ["61.23", "72.6", "-11.37"]
    # CIDEr is the 7th metric: ours 87.65, paper 103.0
    assert cells[18:21] == ["87.65", "103.0", "-15.35"]
    # SPICE is absent from our metrics (no CoreNLP offline): shown as missing, paper kept
    assert cells[21:24] == ["&ndash;", "19.3", "&ndash;"]
    mia_row = re.search(r'<tr data-run="captioning/visual_attention/mia">(.*?)</tr>', html, re.S)
    assert "74.5" in mia_row.group(1) and "106.7" in mia_row.group(1)
    assert "Visual Attention w/ MIA" in html


def test_figures_are_pngs_linked_from_the_page(rendered: tuple[Path, str]) -> None:
    out, html = rendered
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert f"figures/{figure_name(RUNS[0])}" in sources
    assert "figures/table1_val_cider.png" in sources
    for src in sources:
        data = (out.parent / src).read_bytes()
        assert data.startswith(PNG_MAGIC), src
        assert len(data) > 2000, f"{src} is suspiciously small for a plot"


def test_costs_config_versions_and_deviations(rendered: tuple[Path, str]) -> None:
    _, html = rendered
    costs = re.search(r'<table class="costs">(.*?)</table>', html, re.S).group(1)
    assert "12.2" in costs and "13.2" in costs  # wall seconds of the two runs (12.25, 13.25)
    assert "321.5" in costs  # peak RSS in MB
    assert "0.3000" in costs  # best val CIDEr-D (epoch 3 of the fake history)
    assert platform.python_version() in html
    assert "snakemake" in html and "torch" in html
    assert "name: test" in html  # the config, as YAML
    assert "Karpathy split" in html and "validation" in html  # deviations note


def test_missing_metrics_file_names_the_run(tmp_path: Path, repo_root: Path) -> None:
    config = load_config([repo_root / "config.yaml", repo_root / "config" / "test.yaml"])
    files = {run: write_run(tmp_path / "runs", run, METRICS[run], 1.0) for run in RUNS}
    Path(files[RUNS[1]]["metrics"]).unlink()
    with pytest.raises(FileNotFoundError, match="captioning/visual_attention/mia"):
        render_report(config, ["table1"], files, tmp_path / "r" / "index.html", tmp_path / "f")


def test_paper_numbers_match_the_paper_tables() -> None:
    paper = load_paper_results()
    assert paper.value("captioning/visual_attention/base", "CIDEr") == 103.0  # Table 1
    assert paper.value("captioning/visual_regional_attention/mia", "SPICE") == 21.1  # Table 1
    assert paper.value("captioning/transformer/mia", "CIDEr") == 129.6  # Table 2
    assert paper.value("captioning/concept_attention/mia_concepts", "CIDEr") == 106.5  # Table 4
    assert paper.value("captioning/visual_attention/self_attention", "CIDEr") == 96.6  # 3.3
    assert paper.value("vqa/ban/mia", "overall") == 70.2  # Table 3, test-dev
    assert paper.value("vqa/updown/mia", "number") == 51.2  # section 3.2
    # Table 1 has 10 runs x 8 metrics, Table 2 4 x 5, Table 4 adds 2 x 8
    table1 = [r for r in paper.results if r.startswith("captioning/") and
              len(paper.results[r]) == 8]
    assert len(table1) == 12
    assert paper.scale == {"captioning": 100, "vqa": 1}


def test_vqa_metrics_nested_per_answer_type() -> None:
    raw = {"overall": 63.2, "perAnswerType": {"yes/no": 80.1, "number": 44.0, "other": 55.5}}
    assert flatten_metrics(raw) == {"overall": 63.2, "yes/no": 80.1, "number": 44.0,
                                    "other": 55.5}
    spec = {"title": "T3", "task": "vqa", "metrics": ["overall", "number"],
            "runs": ["vqa/updown/base"]}
    table = build_table("table3", spec, {"vqa/updown/base": raw}, load_paper_results())
    overall, number = table.rows[0].cells
    assert overall.ours == 63.2 and overall.paper == 67.3  # VQA is already in %
    assert number.diff == pytest.approx(44.0 - 47.5)


def test_benchmark_reader_rejects_other_files(tmp_path: Path) -> None:
    bad = tmp_path / "x.tsv"
    bad.write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match="x.tsv"):
        read_benchmark(bad)

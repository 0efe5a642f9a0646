"""The report renders from small, well-formed fake run files in the workflow's layout: the paper's
tables with our numbers (mean +- sd over seeds), the paper's and the difference; SPICE n/a with
its reason; Table 3 with the server's test-dev/test-std; MIA's gains with paired-bootstrap
intervals; Figures 4 and 5 as selected; costs from benchmark files.

``write_fake_inputs`` is also used by tests/test_report_browser.py.
"""

from __future__ import annotations

import copy
import json
import platform
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mia.config import load_config
from mia.report.benchmarks import read_benchmark
from mia.report.gains import GainSettings, mia_gains
from mia.report.inputs import ReportInputs
from mia.report.paper import load_paper_results
from mia.report.render import ReportConfig, figure_name, render_report
from mia.report.results import flatten_metrics, load_results
from mia.report.tables import build_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BENCH_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
CAPTION_METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
SPICE_REASON = ("Stanford CoreNLP 3.6.0 jars missing from /venv/pycocoevalcap/spice: "
                "lib/stanford-corenlp-3.6.0.jar; they are downloaded by ...")
N_IMAGES, N_QUESTIONS = 120, 240
MULTI_SEED_RUNS = {"captioning/visual_attention/base": [1, 2, 3],
                   "captioning/visual_attention/mia": [1, 2, 3]}
MISSING_FIGURE4_RUNS = ("captioning/visual_attention/mia_n4", "captioning/concept_attention/mia_n2")
GPU_RUN = "captioning/updown/mia"
ANSWER_TYPES = ("yes/no", "number", "other")


@dataclass
class FakeReport:
    config: dict[str, Any]
    run_files: dict[str, dict[int, dict[str, Any]]]
    server_files: dict[str, dict[int, dict[str, str]]]
    figure5: dict[str, list[str]]
    vqa_annotations: Path
    per_image_cider: dict[tuple[str, int], np.ndarray]  # (run, seed) -> scores x100

    def render(self, root: Path, **kw: Any) -> Path:
        return render_report(self.config, None, self.run_files, root / "index.html",
                             root / "figures", server_files=self.server_files,
                             figure5=self.figure5, vqa_annotations=self.vqa_annotations, **kw)


def paper_config(repo_root: Path, figures: tuple[str, ...] = ("figure4", "figure5")
                 ) -> dict[str, Any]:
    config = load_config([repo_root / "config.yaml"])
    config["report"]["title"] = "Example report rendered from synthetic test files (not results)"
    config["report"]["figures"] = list(figures)
    config["report"]["bootstrap"] = {"resamples": 2000, "seed": 0}
    config["seeds"] = {"default": [123], "runs": MULTI_SEED_RUNS}
    return config


def _quality(run: str) -> float:
    """Fake CIDEr (x100) of a run: the paper's when printed, else near its model's w/ MIA."""
    paper = load_paper_results()
    value = paper.value(run, "CIDEr")
    if value is not None:
        return value
    task, baseline, variant = run.split("/")
    n = int(variant[-1]) if variant.startswith("mia_n") else 2
    return (paper.value(f"{task}/{baseline}/mia", "CIDEr") or 100.0) - abs(n - 2) * 1.5


def _bench(path: Path, wall_s: float, rss: float, cpu_s: float) -> str:
    path.write_text(BENCH_HEADER + f"{wall_s}\t0:00:12\t{rss}\t900.0\t300.0\t310.0\t1.0\t2.0"
                    f"\t95.0\t{cpu_s}\n")
    return str(path)


def _caption_seed(root: Path, run: str, seed: int, difficulty: np.ndarray
                  ) -> tuple[dict[str, Any], np.ndarray]:
    rng = np.random.default_rng([zlib.crc32(run.encode()), seed])
    paper = load_paper_results()
    d = root / run / f"seed{seed}"
    d.mkdir(parents=True)
    quality = _quality(run)
    cider = np.clip(quality + difficulty + rng.normal(0, 8, N_IMAGES), 0, None)  # x100
    rouge = np.clip(55 + difficulty / 4 + rng.normal(0, 3, N_IMAGES), 0, 100)
    meteor = np.clip(26 + difficulty / 8 + rng.normal(0, 2, N_IMAGES), 0, 100)
    bleu4 = np.clip(33 + difficulty / 5 + rng.normal(0, 6, N_IMAGES), 0, 100)
    ids = list(range(1000, 1000 + N_IMAGES))
    per_image = {str(i): {"Bleu_4": bleu4[k] / 100, "METEOR": meteor[k] / 100,
                          "ROUGE_L": rouge[k] / 100, "CIDEr": cider[k] / 100}
                 for k, i in enumerate(ids)}
    metrics: dict[str, Any] = {}
    for m in CAPTION_METRICS:
        base = paper.value(run, m) or paper.value("/".join(run.split("/")[:2]) + "/mia", m) or 30
        metrics[m] = (base - 1.0 + rng.normal(0, 0.3)) / 100
    metrics.update(CIDEr=float(cider.mean() / 100), ROUGE_L=float(rouge.mean() / 100),
                   METEOR=float(meteor.mean() / 100), SPICE=None)
    metrics["skipped"] = {"SPICE": SPICE_REASON}
    metrics["num_images"] = N_IMAGES
    (d / "metrics_test.json").write_text(json.dumps(metrics))
    (d / "per_image.json").write_text(json.dumps(per_image))
    stages = ["xe", "scst"] if run.split("/")[1] in ("updown", "transformer") else ["xe"]
    files: dict[str, Any] = {"metrics": str(d / "metrics_test.json"),
                             "per_item": str(d / "per_image.json"), "histories": {},
                             "benchmarks": {}}
    for k, stage in enumerate(stages):
        history = [{"epoch": e, "steps": 10, "train_loss": 5.0 - e - k, "val_cider":
                    0.1 * e + 0.2 * k + 0.01 * seed, "lr": 1e-3, "wall_s": 2.0,
                    "val_wall_s": 0.5} for e in (1, 2, 3)]
        if run == GPU_RUN:
            for row in history:
                row["device"] = "cuda:0 (NVIDIA H200)"
        (d / f"{stage}_history.json").write_text(json.dumps(history))
        files["histories"][stage] = str(d / f"{stage}_history.json")
        files["benchmarks"][stage] = _bench(d / f"{stage}.tsv", 3600.0 * (k + 1), 321.5 + seed,
                                            1800.0)
    return files, cider


def _vqa_seed(root: Path, run: str, seed: int, types: list[str]) -> dict[str, Any]:
    rng = np.random.default_rng([zlib.crc32(run.encode()), seed])
    d = root / run / f"seed{seed}"
    d.mkdir(parents=True)
    skill = 0.55 + (0.1 if run.endswith("/mia") else 0.0) + (0.05 if "/ban/" in run else 0.0)
    levels = np.array([0.0, 30.0, 60.0, 90.0, 100.0])
    acc = levels[np.clip((rng.random(N_QUESTIONS) + skill) * 3, 0, 4).astype(int)]
    per_question = {str(5000 + q): float(a) for q, a in enumerate(acc)}
    kinds = np.array(types)
    metrics = {"overall": round(float(acc.mean()), 2),
               "perAnswerType": {t: round(float(acc[kinds == t].mean()), 2)
                                 for t in ANSWER_TYPES},
               "perQuestionType": {"how many": 50.0}, "perQuestion": per_question}
    (d / "metrics_val.json").write_text(json.dumps(metrics))
    history = [{"epoch": e, "train_loss": 3.0 / e, "val_accuracy": 50 + e} for e in (1, 2)]
    (d / "history.json").write_text(json.dumps(history))
    return {"metrics": str(d / "metrics_val.json"), "per_item": None,
            "histories": {"train": str(d / "history.json")},
            "benchmarks": {"train": _bench(d / "train.tsv", 1800.0, 2048.0, 3600.0)}}


def _figure5(root: Path) -> dict[str, list[str]]:
    from mia.report.attention_maps import GridLayout, Panel, draw_attention

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (84, 84, 3), dtype=np.uint8)
    words = [f"concept{i}" for i in range(49)]
    out: dict[str, list[str]] = {}
    for n in (1, 3, 5):
        visual = rng.dirichlet(np.full(49, 0.3 / n), size=49)
        concepts = rng.dirichlet(np.full(49, 0.3 / n), size=49)
        drawn = draw_attention(image, GridLayout(7, 7), [Panel(f"N = {n}", visual, concepts)],
                               words, [3, 17, 40], root / f"figure5_n{n}.png", image_id=42)
        out[f"N={n}"] = [str(drawn.png)]
    return out


def write_fake_inputs(root: Path, config: dict[str, Any]) -> FakeReport:
    """Fake files for every run of the config's selected tables plus Figure 4's sweep, seeds as
    MULTI_SEED_RUNS says, server results for Up-Down only."""
    runs = [r for t in config["report"]["tables"] for r in config["tables"][t]["runs"]]
    runs += [f"captioning/{m}/{v}" for m in ("visual_attention", "concept_attention")
             for v in ("base", "mia_n1", "mia_n2", "mia_n3", "mia_n4", "mia_n5")]
    runs = list(dict.fromkeys(runs))
    difficulty = np.random.default_rng(99).normal(0, 25, N_IMAGES)
    types = [ANSWER_TYPES[q % 3] for q in range(N_QUESTIONS)]
    annotations = root / "vqa_annotations.json"
    root.mkdir(parents=True, exist_ok=True)
    annotations.write_text(json.dumps({"annotations": [
        {"question_id": 5000 + q, "answer_type": t} for q, t in enumerate(types)]}))
    run_files: dict[str, dict[int, dict[str, Any]]] = {}
    cider: dict[tuple[str, int], np.ndarray] = {}
    server: dict[str, dict[int, dict[str, str]]] = {}
    for run in runs:
        run_files[run] = {}
        for seed in MULTI_SEED_RUNS.get(run, [123]):
            if run.startswith("vqa/"):
                run_files[run][seed] = _vqa_seed(root, run, seed, types)
            else:
                run_files[run][seed], cider[(run, seed)] = _caption_seed(root, run, seed,
                                                                         difficulty)
        if run.startswith("vqa/updown/"):
            bump = 1.0 if run.endswith("/mia") else 0.0
            dev, std = root / run / "test-dev.json", root / run / "test-std.json"
            dev.write_text(json.dumps([{"test-dev": {"overall": 66.0 + bump, "number": 45.0}}]))
            std.write_text(json.dumps({"test-std": {"overall": 66.5 + bump}}))
            server[run] = {123: {"test-dev": str(dev), "test-std": str(std)}}
    return FakeReport(config, run_files, server, _figure5(root), annotations, cider)


@pytest.fixture(scope="module")
def fake(repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> FakeReport:
    root = tmp_path_factory.mktemp("fake_runs")
    return write_fake_inputs(root, paper_config(repo_root))


@pytest.fixture(scope="module")
def rendered(fake: FakeReport, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("report")
    out = fake.render(root, tables_dir=root / "tables", paper_figures_dir=root / "paper_figures")
    return out, out.read_text()


def row_html(html: str, table: str, run: str) -> str:
    section = re.search(rf'<table class="results" data-table="{table}".*?</table>', html, re.S)
    assert section, f"no table {table}"
    row = re.search(rf'<tr data-run="{re.escape(run)}">(.*?)</tr>', section.group(0), re.S)
    assert row, f"no row {run} in {table}"
    return row.group(1)


def cells(row: str) -> list[str]:
    """Per metric cell: its text with tags removed and whitespace collapsed."""
    out = []
    for cell in re.findall(r'<td class="m[^"]*">(.*?)</td>', row, re.S):
        spans = re.findall(r"<span[^>]*>(.*?)</span>", cell, re.S)
        out.append(" | ".join(re.sub(r"<[^>]+>", "", s).strip() for s in spans))
    return out


# ------------------------------------------------------------------ tables


def test_table1_cells_are_ours_paper_difference_with_seed_spread(fake: FakeReport,
                                                                 rendered: tuple[Path, str]
                                                                 ) -> None:
    _, html = rendered
    run = "captioning/visual_attention/base"
    values = [float(np.mean(fake.per_image_cider[(run, s)])) for s in (1, 2, 3)]
    mean, sd = np.mean(values), np.std(values, ddof=1)
    row = cells(row_html(html, "table1", run))
    assert len(row) == 8
    # CIDEr: mean +- sd (n=3) over seeds, the paper's 103.0, mean - 103.0
    assert row[6] == f"{mean:.2f} | &plusmn;{sd:.2f} (n=3) | 103.0 | {mean - 103.0:+.2f}"
    # SPICE is null with a reason: n/a (short reason), footnote with the whole reason
    assert row[7].startswith("n/a (no CoreNLP jars)") and row[7].endswith("| 19.3 | &ndash;")
    section = re.search(r'data-table="table1".*?</ul>', html, re.S).group(0)
    assert "lib/stanford-corenlp-3.6.0.jar" in section
    one_seed = cells(row_html(html, "table1", "captioning/visual_regional_attention/mia"))
    assert "&plusmn;" not in one_seed[6] and one_seed[6].split(" | ")[1] == "114.1"
    assert "seeds 1, 2, 3" in row_html(html, "table1", run)
    assert ">Visual Attention w/ MIA<" in html.replace("<br>", "<")


def test_tables_keep_the_paper_order_and_headers(rendered: tuple[Path, str]) -> None:
    _, html = rendered
    t1 = re.search(r'data-table="table1".*?</table>', html, re.S).group(0)
    headers = re.findall(r"<th>([^<]+)</th>", t1)
    assert headers == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE", "CIDEr",
                       "SPICE"]
    runs = re.findall(r'<tr data-run="([^"]+)"', t1)
    assert runs[:4] == ["captioning/visual_attention/base", "captioning/visual_attention/mia",
                        "captioning/concept_attention/base", "captioning/concept_attention/mia"]
    assert t1.count("<tbody>") == 5  # one group per baseline
    t4 = re.search(r'data-table="table4".*?</table>', html, re.S).group(0)
    assert re.findall(r'<tr data-run="([^"]+)"', t4)[:3] == [
        "captioning/visual_attention/base", "captioning/visual_attention/mia_visual",
        "captioning/visual_attention/mia"]


def test_best_marks_reproduce_the_papers_bold_face(fake: FakeReport) -> None:
    """Table 4: Visual Attention w/ I_N is bold on BLEU-1..4, w/ MIA on METEOR..SPICE; Concept
    Attention w/ MIA on everything. Table 1: w/ MIA everywhere."""
    paper = load_paper_results()
    results = load_results(ReportInputs.from_dict(fake.run_files))
    t4 = build_table("table4", fake.config["tables"]["table4"], results, paper)
    bold = {row.run: [c.best_paper for c in row.cells] for row in t4.rows}
    assert bold["captioning/visual_attention/mia_visual"] == [True] * 4 + [False] * 4
    assert bold["captioning/visual_attention/mia"] == [False] * 4 + [True] * 4
    assert bold["captioning/visual_attention/base"] == [False] * 8
    assert bold["captioning/concept_attention/mia"] == [True] * 8
    t1 = build_table("table1", fake.config["tables"]["table1"], results, paper)
    for row in t1.rows:
        assert all(c.best_paper == row.run.endswith("/mia") for c in row.cells), row.run
        # Ours: the larger mean of the pair wins each column (SPICE is n/a: no mark at all).
    va = [r for r in t1.rows if r.group == "captioning/visual_attention"]
    for k in range(7):
        means = [r.cells[k].ours.mean for r in va]
        assert [r.cells[k].best_ours for r in va] == [m == max(means) for m in means]
    assert not any(r.cells[7].best_ours for r in t1.rows)


def test_table3_server_columns_and_local_answer_types(fake: FakeReport,
                                                      rendered: tuple[Path, str]) -> None:
    _, html = rendered
    t3 = re.search(r'data-table="table3".*?</table>', html, re.S).group(0)
    assert re.findall(r"<th>([^<]+)</th>", t3) == ["Test-dev", "Test-std", "Overall", "Yes/No",
                                                   "Number", "Other"]
    assert 'colspan="2">evaluation server<' in t3 and "ours on val (local)" in t3
    updown = cells(row_html(html, "table3", "vqa/updown/mia"))
    assert updown[0] == "67.00 | 68.8 | -1.80"  # test-dev from the server file
    assert updown[1] == "67.50 | 69.1 | -1.60"
    metrics = json.loads(Path(fake.run_files["vqa/updown/mia"][123]["metrics"]).read_text())
    assert updown[2].startswith(f"{metrics['overall']:.2f} | &ndash;")  # no paper val number
    number = metrics["perAnswerType"]["number"]
    assert updown[4] == f"{number:.2f} | 51.2 | {number - 51.2:+.2f}"
    ban = cells(row_html(html, "table3", "vqa/ban/base"))
    assert ban[0].startswith("n/a (not submitted)") and "69.6" in ban[0]


def test_other_tables_and_csv(rendered: tuple[Path, str]) -> None:
    out, html = rendered
    s33 = cells(row_html(html, "section3_3_self_attention",
                         "captioning/visual_attention/self_attention"))
    assert s33[3].split(" | ")[1] == "96.6"  # CIDEr, the only number section 3.3 prints
    assert s33[0].split(" | ")[1] == "&ndash;"
    # N = 2 is the mia run itself (config.yaml: MIA's default N is not trained twice), and the
    # paper's w/ MIA numbers
    fig4 = cells(row_html(html, "figure4_iterations", "captioning/visual_attention/mia"))
    assert fig4[3].split(" | ")[2] == "106.7"  # mean | +-sd (n=3) | paper | difference
    tables = out.parent / "tables"
    assert sorted(p.name for p in tables.iterdir()) == sorted(
        f"{k}.{ext}" for k in ("table1", "table2", "table3", "table4",
                               "section3_3_self_attention", "figure4_iterations")
        for ext in ("csv", "html"))
    csv_text = (tables / "table1.csv").read_text()
    assert csv_text.splitlines()[0].startswith("run,seeds,Bleu_1 ours,Bleu_1 sd,Bleu_1 paper")
    assert "n/a (Stanford CoreNLP" in csv_text
    assert 'data-table="table2"' in (tables / "table2.html").read_text()


# ------------------------------------------------------------------ gains


def test_gains_have_paired_intervals_and_say_what_they_mean(fake: FakeReport,
                                                            rendered: tuple[Path, str]) -> None:
    _, html = rendered
    caption = re.search(r'<table class="gains" data-task="captioning">.*?<ul class="gain-words">'
                        r'.*?</ul>', html, re.S).group(0)
    row = re.search(r'<tr data-gain="captioning/visual_attention">(.*?)</tr>', caption,
                    re.S).group(1)
    assert "120 images, seeds 3/3" in row
    cider = re.search(r'data-metric="CIDEr"[^>]*>(.*?)</td>', row, re.S).group(1)
    base = np.stack([fake.per_image_cider[("captioning/visual_attention/base", s)]
                     for s in (1, 2, 3)])
    mia = np.stack([fake.per_image_cider[("captioning/visual_attention/mia", s)]
                    for s in (1, 2, 3)])
    gain = mia.mean() - base.mean()
    assert re.search(rf">{re.escape(f'{gain:+.2f}')}(&dagger;)?<", cider)
    assert re.search(r'class="ci"[^>]*>\[-?\d+\.\d\d, -?\d+\.\d\d\]</span>', cider)
    assert re.search(r">(MIA better|MIA worse|includes 0)<", cider)
    bleu = re.search(r'data-metric="Bleu_4"[^>]*>(.*?)</td>', row, re.S).group(1)
    assert "no interval" in bleu and "<sup>" in bleu
    notes = re.search(r'<ul class="tablenotes">(.*?)</ul>', caption, re.S).group(1)
    assert "BLEU is corpus-level" in notes and "SPICE not available" in notes
    assert "per-image METEOR" in notes
    words = re.search(r'<ul class="gain-words">(.*?)</ul>', caption, re.S).group(1)
    assert re.search(rf"Visual Attention: MIA {re.escape(f'{gain:+.2f}')} CIDEr \[95% CI "
                     r"-?\d+\.\d\d, -?\d+\.\d\d\]: (MIA (better|worse) \(the interval excludes "
                     r"zero\)|consistent with no gain)", words)
    vqa = re.search(r'<table class="gains" data-task="vqa">.*?</table>', html, re.S).group(0)
    number = re.search(r'data-gain="vqa/updown">.*?data-metric="number"[^>]*>(.*?)</td>', vqa,
                       re.S).group(1)
    assert "n=80" in number  # the Number questions only
    assert 'data-gain="captioning/updown"' in caption


def test_gain_interval_matches_the_bootstrap_and_is_deterministic(fake: FakeReport) -> None:
    results = load_results(ReportInputs.from_dict(fake.run_files, vqa_annotations=None))
    settings = GainSettings(resamples=500, seed=3)
    paper = load_paper_results()
    a = {(g.baseline, g.metric): g for g in mia_gains(results, paper, settings)}
    b = {(g.baseline, g.metric): g for g in mia_gains(results, paper, settings)}
    assert a == b
    cider = a[("captioning/visual_regional_attention", "CIDEr")]
    assert cider.interval.estimate == pytest.approx(cider.corpus)  # CIDEr is a per-image mean
    assert cider.interval.n_items == N_IMAGES
    # Without the annotations, VQA Number has no per-question answer types: said, not guessed.
    number = a[("vqa/updown", "number")]
    assert number.interval is None and "answer types" in number.note
    assert a[("vqa/updown", "overall")].interval.n_items == N_QUESTIONS


# ------------------------------------------------------------------ figures


def test_figures_are_pngs_linked_from_the_page(rendered: tuple[Path, str]) -> None:
    out, html = rendered
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert f"figures/{figure_name('captioning/visual_attention/base')}" in sources
    assert "figures/table1_val_cider.png" in sources
    assert "paper_figures/figure4/figure4.png" in sources
    assert sum(s.startswith("paper_figures/figure5/") for s in sources) == 3
    for src in sources:
        data = (out.parent / src).read_bytes()
        assert data.startswith(PNG_MAGIC), src
        assert len(data) > 2000, f"{src} is suspiciously small for a plot"
    assert 'id="fig-figure4"' in html and 'id="fig-figure5"' in html
    assert "N=3, image 42, positions 3, 17, 40" in html  # from the JSON beside the PNG


def test_figure4_gaps_and_the_n2_fallback(fake: FakeReport, tmp_path: Path) -> None:
    """Without mia_n4 (VA) and mia_n2 (CA): a gap at VA N = 4, CA N = 2 from CA's mia run."""
    from mia.report.figure4 import figure4_data

    partial = copy.copy(fake)
    partial.run_files = {r: f for r, f in fake.run_files.items() if r not in MISSING_FIGURE4_RUNS
                         and r.split("/")[1] in ("visual_attention", "concept_attention")}
    partial.config = copy.deepcopy(fake.config)
    partial.config["report"]["tables"] = ["table4"]
    partial.config["report"]["figures"] = ["figure4"]
    results = load_results(ReportInputs.from_dict(partial.run_files))
    data = figure4_data(results)
    va = data.mean[("visual_attention", "CIDEr")]
    assert np.isnan(va[3]) and np.isnan(va).sum() == 1  # N = 4 missing: a gap
    assert data.sources[("concept_attention", 2)] == "captioning/concept_attention/mia"
    ca_mia = results["captioning/concept_attention/mia"].value("CIDEr").mean
    assert data.mean[("concept_attention", "CIDEr")][1] == pytest.approx(ca_mia)
    assert data.base[("visual_attention", "CIDEr")] == pytest.approx(
        results["captioning/visual_attention/base"].value("CIDEr").mean)
    assert "SPICE" in data.missing_reason  # null everywhere: the panel says n/a
    html = partial.render(tmp_path).read_text()
    caption = re.search(r'id="fig-figure4".*?</figure>', html, re.S).group(0)
    assert "visual_attention N=4: <i>not built (gap)</i>" in caption
    assert "(the w/ MIA run, trained with N = 2)" in caption
    assert (tmp_path / "figures" / "figure4" / "figure4.png").read_bytes().startswith(PNG_MAGIC)


def test_only_selected_tables_and_figures_are_rendered(fake: FakeReport, tmp_path: Path) -> None:
    report = copy.copy(fake)
    report.config = copy.deepcopy(fake.config)
    report.config["report"]["figures"] = ["figure4"]
    report.config["report"]["tables"] = ["table2"]
    report.run_files = {r: f for r, f in fake.run_files.items() if "/updown/" in r
                        or "/transformer/" in r}
    html = report.render(tmp_path).read_text()
    assert 'data-table="table2"' in html and 'data-table="table1"' not in html
    assert 'id="fig-figure4"' in html and 'id="fig-figure5"' not in html
    assert not (tmp_path / "figures" / "figure5").exists()
    report.config["report"]["figures"] = []
    html = report.render(tmp_path / "none").read_text()
    assert "fig-figure4" not in html and not (tmp_path / "none" / "figures" / "figure4").exists()


# ------------------------------------------------------------------ costs, config, versions


def test_costs_device_gpu_hours_and_totals(rendered: tuple[Path, str]) -> None:
    _, html = rendered
    costs = re.search(r'<table class="costs">(.*?)</table>', html, re.S).group(1)
    rows = re.findall(r"<tr>(.*?)</tr>", costs, re.S)
    text = [re.sub(r"<[^>]+>", "", r).split("\n") for r in rows]
    gpu = [r for r in rows if "updown/<wbr>mia" in r and ">scst<" in r][0]
    # The history recorded the GPU: 7200 s wall = 2 GPU-hours; CPU time 1800 s = 0.5 CPU-hours
    assert "cuda:0 (NVIDIA H200)" in gpu and ">2.000<" in gpu and ">0.500<" in gpu
    # wall seconds; best val CIDEr-D (epoch 3) on the tables' scale: 1.73 in history.json is 173
    assert ">7200.0<" in gpu and "173.00 <small>val CIDEr-D (x100)" in gpu
    cpu = [r for r in rows if "updown/<wbr>base" in r and ">xe<" in r][0]
    # No device recorded: the paper config's rule requests a GPU, so the hours count as GPU
    assert "train_captioner requests gpu=1" in cpu and ">1.000<" in cpu
    total = re.search(r"<tfoot>(.*?)</tfoot>", costs, re.S).group(1)
    assert "training jobs" in total and "(max)" in total
    assert len(text) > 30


def test_config_versions_deviations(rendered: tuple[Path, str]) -> None:
    _, html = rendered
    assert platform.python_version() in html
    assert "snakemake" in html and "torch" in html
    assert "name: paper" in html  # the config, as YAML
    assert "Karpathy split" in html and "validation" in html  # deviations note


def test_single_seed_layout_and_missing_files(tmp_path: Path, repo_root: Path) -> None:
    """The old layout {run: {metrics, histories, benchmarks}} still renders (under the default
    seed); a missing metrics file names the run; a run of a table without files is an error."""
    config = load_config([repo_root / "config.yaml", repo_root / "config" / "demo.yaml",
                          repo_root / "config" / "test.yaml"])
    files = {}
    for run in config["tables"]["table1"]["runs"]:
        d = tmp_path / run
        d.mkdir(parents=True)
        (d / "metrics_test.json").write_text(json.dumps({"CIDEr": 0.87654, "Bleu_1": 0.61234,
                                                         "SPICE": None, "skipped": {
                                                             "SPICE": "not requested"}}))
        (d / "history.json").write_text(json.dumps([{"epoch": 1, "train_loss": 2.0,
                                                     "val_cider": 0.3}]))
        files[run] = {"metrics": str(d / "metrics_test.json"),
                      "histories": {"xe": str(d / "history.json")},
                      "benchmarks": {"xe": _bench(d / "b.tsv", 12.25, 100.0, 5.0)}}
    out = render_report(config, ["table1"], files, tmp_path / "r" / "index.html",
                        tmp_path / "r" / "figures")
    html = out.read_text()
    row = cells(row_html(html, "table1", "captioning/visual_attention/base"))
    assert row[0] == "61.23 | 72.6 | -11.37" and row[6] == "87.65 | 103.0 | -15.35"
    assert row[7].startswith("n/a (not requested)")
    assert "seed 123" in html  # config.yaml's training seed
    assert "CPU (no GPU requested)" in html or "cpu (config)" in html
    Path(files["captioning/visual_attention/mia"]["metrics"]).unlink()
    with pytest.raises(FileNotFoundError, match="captioning/visual_attention/mia"):
        render_report(config, ["table1"], files, tmp_path / "x" / "index.html", tmp_path / "f")
    del files["captioning/visual_attention/mia"]
    with pytest.raises(ValueError, match="no files given"):
        render_report(config, ["table1"], files, tmp_path / "x" / "index.html", tmp_path / "f")


def test_inputs_and_report_config_refuse_unknown_keys() -> None:
    with pytest.raises(ValueError, match="per_image"):
        ReportInputs.from_dict({"captioning/a/base": {1: {"metrics": "m.json",
                                                          "per_image": "p.json"}}})
    with pytest.raises(ValueError, match="not a run id"):
        ReportInputs.from_dict({"a/base": {"metrics": "m.json"}})
    inputs = ReportInputs.from_dict({"captioning/a/base": {"7": {"metrics": "m.json"}}},
                                    figure5={"N=1": "x.png"})
    assert inputs.seeds("captioning/a/base") == [7] and inputs.figure5 == {"N=1": [Path("x.png")]}
    with pytest.raises(ValueError, match="figure6"):
        ReportConfig.from_dict({"tables": ["table1"], "figures": ["figure6"]})
    with pytest.raises(ValueError, match="resample"):
        ReportConfig.from_dict({"tables": [], "bootstrap": {"resample": 10}})
    assert ReportConfig.from_dict({"tables": ["t"]}).bootstrap.resamples == 10_000


# ------------------------------------------------------------------ readers


def test_paper_numbers_match_the_paper_tables() -> None:
    paper = load_paper_results()
    assert paper.value("captioning/visual_attention/base", "CIDEr") == 103.0  # Table 1
    assert paper.value("captioning/visual_regional_attention/mia", "SPICE") == 21.1  # Table 1
    assert paper.value("captioning/transformer/mia", "CIDEr") == 129.6  # Table 2
    assert paper.value("captioning/updown/base", "Bleu_4") == 36.5  # Table 2
    assert paper.value("captioning/concept_attention/mia_concepts", "CIDEr") == 106.5  # Table 4
    assert paper.value("captioning/visual_attention/mia_visual", "Bleu_1") == 74.7  # Table 4
    assert paper.value("captioning/visual_attention/self_attention", "CIDEr") == 96.6  # 3.3
    assert paper.value("captioning/concept_attention/self_attention", "CIDEr") == 105.4  # 3.3
    assert paper.value("vqa/ban/mia", "test-dev") == 70.2  # Table 3
    assert paper.value("vqa/updown/base", "test-std") == 67.5  # Table 3
    assert paper.value("vqa/updown/mia", "number") == 51.2  # section 3.2
    assert paper.value("vqa/ban/base", "overall") is None  # the paper prints no val accuracy
    assert paper.value("captioning/concept_attention/mia_n2", "CIDEr") == 107.9  # alias
    table1 = [r for r in paper.results if r.startswith("captioning/") and
              len(paper.results[r]) == 8]
    assert len(table1) == 12  # Table 1's 10 rows and Table 4's 2
    assert paper.scale == {"captioning": 100, "vqa": 1}
    text = (Path(__file__).parents[1] / "mia" / "report" / "paper_results.yaml").read_text()
    assert "/work/" not in text and "shared" not in text


def test_vqa_metrics_nested_per_answer_type() -> None:
    raw = {"overall": 63.2, "perAnswerType": {"yes/no": 80.1, "number": 44.0, "other": 55.5},
           "perQuestion": {"1": 100.0}, "perQuestionType": {"what": 3.0}}
    assert flatten_metrics(raw) == {"overall": 63.2, "yes/no": 80.1, "number": 44.0,
                                    "other": 55.5}


def test_server_result_formats(tmp_path: Path) -> None:
    from mia.report.results import read_server_result

    nested = tmp_path / "a.json"
    nested.write_text(json.dumps([{"test-dev": {"overall": 68.1, "yes/no": 84.0}}]))
    flat = tmp_path / "b.json"
    flat.write_text(json.dumps({"overall": 68.4}))
    assert read_server_result(nested, "test-dev", "r") == 68.1
    assert read_server_result(flat, "test-std", "r") == 68.4
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps({"test-dev": {"yes/no": 1.0}}))
    with pytest.raises(ValueError, match="c.json.*overall"):
        read_server_result(bad, "test-dev", "r")


def test_benchmark_reader_rejects_other_files(tmp_path: Path) -> None:
    bad = tmp_path / "x.tsv"
    bad.write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match="x.tsv"):
        read_benchmark(bad)


# ------------------------------------------------------------------ snakemake --report captions


class _Wildcards(dict):
    """Snakemake's Wildcards: attribute access and .get."""

    def __getattr__(self, name: str) -> str:
        return self[name]


@pytest.mark.parametrize(("caption", "rule", "wildcards", "expected"), [
    ("report_html.rst", "render_report", {}, "confidence interval"),
    ("workflow.rst", "render_report", {}, "Categories"),
    ("figures.rst", "render_report", {"figure": "captioning__visual_attention__base"},
     "one line per training seed"),
    ("figures.rst", "render_report", {"figure": "table1_val_cider"}, "table1"),
    ("tables.rst", "render_report", {"table": "table3"}, "Table 3: VQA v2 accuracy"),
    ("paper_figures.rst", "render_report", {"figure": "figure4", "name": "figure4"},
     "Figure 4"),
    ("paper_figures.rst", "render_report", {"figure": "figure5", "name": "N_1_1_x"},
     "Figure 5"),
    ("metrics.rst", "evaluate_vqa", {"baseline": "ban", "variant": "mia", "seed": "123",
                                     "split": "val"}, "vqa/ban/mia"),
    ("training.rst", "train_captioner_scst", {"baseline": "updown", "variant": "mia",
                                              "seed": "7"}, "SCST stage"),
])
def test_snakemake_report_captions_render(repo_root: Path, caption: str, rule: str,
                                          wildcards: dict[str, str], expected: str) -> None:
    """Each caption renders as `snakemake --report` renders it (jinja2, then docutils)."""
    import jinja2
    from docutils.core import publish_parts

    class Smk:
        pass

    smk = Smk()
    smk.wildcards, smk.rule = _Wildcards(wildcards), rule  # type: ignore[attr-defined]
    smk.config = load_config([repo_root / "config.yaml"])  # type: ignore[attr-defined]
    text = (repo_root / "report" / caption).read_text()
    rst = jinja2.Environment().from_string(text).render(snakemake=smk, categories={}, files=[])
    html = publish_parts(rst, writer="html",
                         settings_overrides={"report_level": 2, "halt_level": 2})["body"]
    assert expected in html, html

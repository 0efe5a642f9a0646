"""The report says what happened where the number is: an SCST stage that kept its XE weights,
constant predictions, seeds left out (NaN, Infinity, a string), one scale per metric, gains
coloured by their direction with the number of comparisons and Holm's correction, one point
estimate per claim, the demo's paper columns as context, the whole pipeline's cost, the code's
commit. Fake run files in the workflow's layout (tests/test_report.py), changed one fault at a
time.
"""

from __future__ import annotations

import copy
import html as htmllib
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_report import BENCH_HEADER, FakeReport, paper_config, row_html, write_fake_inputs

from mia.report.gains import GainSettings, mia_gains
from mia.report.inputs import ReportInputs
from mia.report.paper import load_paper_results
from mia.report.results import load_results


def _fake(repo_root: Path, root: Path, tables: list[str], demo: bool = False,
          resamples: int = 500) -> FakeReport:
    config = paper_config(repo_root, figures=())
    config["report"]["tables"] = tables
    config["report"]["bootstrap"] = {"resamples": resamples, "seed": 0}
    if demo:
        config["data"]["source"] = "demo"
    fake = write_fake_inputs(root, config)
    wanted = {r for t in tables for r in config["tables"][t]["runs"]}
    if "table4" not in tables:  # Figure 4's sweep only where a test draws it: rendering is faster
        fake.run_files = {r: f for r, f in fake.run_files.items() if r in wanted}
    return fake


def _only(fake: FakeReport, keep: str) -> FakeReport:
    """The fake report restricted to runs whose id contains ``keep``."""
    out = copy.copy(fake)
    out.run_files = {r: f for r, f in fake.run_files.items() if keep in r}
    out.server_files = {r: f for r, f in fake.server_files.items() if keep in r}
    return out


def _cell_html(html: str, table: str, run: str, column: int) -> str:
    return re.findall(r'<td class="m[^"]*">(.*?)</td>', row_html(html, table, run), re.S)[column]


# ------------------------------------------------------------------ one report, faults planted

SCST_KEPT, SCST_TRAINED = "captioning/updown/mia", "captioning/updown/base"
CONSTANT_CAPTIONS, VARIED_CAPTIONS = ("captioning/concept_condition/base",
                                      "captioning/concept_condition/mia")
NAN_SEED_RUN = "captioning/visual_attention/mia"  # seed 2's CIDEr is NaN
NAN_PER_IMAGE_RUN = "captioning/concept_attention/mia"  # image 1005's CIDEr is NaN
METEOR_RUN = "captioning/visual_regional_attention"  # corpus METEOR far from the per-image mean
NOT_NUMBERS = {  # run -> (Bleu_1 as written in the JSON, as the report says it)
    "captioning/visual_regional_attention/mia": ("Infinity", "Infinity"),
    "captioning/visual_condition/mia": ("-Infinity", "-Infinity"),
    "captioning/concept_condition/mia": ('"0.87"', "a string ('0.87')"),
    "captioning/concept_attention/base": ("true", "a boolean (true)"),
}
PIPELINE_BENCHMARKS = {
    "extract_grid_features.tsv": 7200.0, "build_concept_store/grid.tsv": 1800.0,
    "download/coco_train.tsv": 600.0, "train_captioner/updown/mia/s123/xe.tsv": 3600.0,
    "train_captioner/updown/mia/s123/scst.tsv": 1800.0,
    "decode_captions/updown/mia/s123/test.tsv": 900.0,
    "evaluate_captions/updown/mia/s123/test.tsv": 300.0,
    "render_report.tsv": 99999.0, "some_new_rule.tsv": 60.0}


def _rewrite(path: str | Path, change: Any) -> Path:
    path = Path(path)
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data) or data))
    return path


def _plant_faults(fake: FakeReport, root: Path) -> dict[str, Any]:
    """Every fault of this module, each in its own run; returns what the tests need to know."""
    facts: dict[str, Any] = {}
    for run, epoch in ((SCST_KEPT, 0), (SCST_TRAINED, 2)):  # which epoch SCST's model.pt holds
        model = root / run.replace("/", "_") / "scst_model.pt"
        model.parent.mkdir(parents=True)
        torch.save({"epoch": epoch, "val_cider": 1.2345, "model": {"w": torch.zeros(3)},
                    "xe_model": {"epoch": 3, "val_cider": 1.0}}, model)
        fake.run_files[run][123]["models"] = {"scst": str(model)}
    # Histories on their own scales: 0..1 CIDEr-D, percent accuracy.
    _rewrite(fake.run_files["captioning/visual_condition/base"][123]["histories"]["xe"],
             lambda _: [{"epoch": 1, "train_loss": 3.0, "val_cider": 0.6203}])
    _rewrite(fake.run_files["vqa/updown/base"][123]["histories"]["train"],
             lambda _: [{"epoch": 1, "train_loss": 3.0, "val_accuracy": 53.7}])
    # Constant predictions: one caption for every image; '2' to every Number question.
    ids = list(range(1000, 1120))
    for run, text in ((CONSTANT_CAPTIONS, lambda i: "a red square"),
                      (VARIED_CAPTIONS, lambda i: f"a shape {i % 7}")):
        captions = root / f"{run.replace('/', '_')}_captions.json"
        captions.write_text(json.dumps([{"image_id": i, "caption": text(i)} for i in ids]))
        fake.run_files[run][123]["predictions"] = str(captions)
    types = {a["question_id"]: a["answer_type"] for a in
             json.loads(fake.vqa_annotations.read_text())["annotations"]}
    for run in ("vqa/ban/base", "vqa/ban/mia"):
        answers = root / f"{run.replace('/', '_')}_answers.json"
        answers.write_text(json.dumps([{"question_id": q, "answer": "2" if t == "number"
                                        else f"answer {q % 5}"} for q, t in types.items()]))
        fake.run_files[run][123]["predictions"] = str(answers)
    # BAN w/ MIA worse than its baseline on every question: a significant LOSS.
    base = json.loads(Path(fake.run_files["vqa/ban/base"][123]["metrics"]).read_text())

    def worse(metrics: dict[str, Any]) -> None:
        metrics["perQuestion"] = {q: max(0.0, v - 30.0) for q, v in base["perQuestion"].items()}
        metrics["overall"] = float(np.mean(list(metrics["perQuestion"].values())))
    _rewrite(fake.run_files["vqa/ban/mia"][123]["metrics"], worse)
    # A NaN seed, metrics that are no numbers, a NaN per-image score.
    path = Path(fake.run_files[NAN_SEED_RUN][2]["metrics"])
    path.write_text(path.read_text().replace('"CIDEr": ', '"CIDEr": NaN, "was": '))
    facts["nan_seed_file"] = path
    facts["not_number_files"] = {}
    for run, (literal, _) in NOT_NUMBERS.items():
        path = Path(fake.run_files[run][123]["metrics"])
        raw = json.loads(path.read_text())
        raw.pop("Bleu_1")
        path.write_text(json.dumps(raw)[:-1] + f', "Bleu_1": {literal}}}')
        facts["not_number_files"][run] = path

    def nan_image(scores: dict[str, Any]) -> None:
        scores["1005"]["CIDEr"] = float("nan")
    facts["nan_per_image_file"] = _rewrite(fake.run_files[NAN_PER_IMAGE_RUN][123]["per_item"],
                                           nan_image)
    for variant, corpus in (("base", 0.20), ("mia", 0.25)):
        _rewrite(fake.run_files[f"{METEOR_RUN}/{variant}"][123]["metrics"],
                 lambda m, c=corpus: m.update(METEOR=c))
    bench = root / "benchmarks"
    for name, wall in PIPELINE_BENCHMARKS.items():
        path = bench / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(BENCH_HEADER + f"{wall}\t0\t100.0\t1\t1\t1\t0\t0\t90\t{wall / 2}\n")
    facts["benchmarks"] = bench
    return facts


@pytest.fixture(scope="module")
def faulty(repo_root: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[FakeReport, dict[str, Any], str, str]:
    """(fake inputs, facts, the page, the log) of one report with every fault planted."""
    import logging

    root = tmp_path_factory.mktemp("faulty")
    # 4,000 resamples: p-values down to 1/2,000, below Holm's first threshold 0.05 / ~25
    fake = _fake(repo_root, root / "runs", ["table1", "table2", "table3"], resamples=4000)
    facts = _plant_faults(fake, root)
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Keep(level=logging.WARNING)
    logging.getLogger("mia.report").addHandler(handler)
    try:
        page = fake.render(root / "report", benchmarks_dir=facts["benchmarks"]).read_text()
    finally:
        logging.getLogger("mia.report").removeHandler(handler)
    return fake, facts, page, "\n".join(records)


# ------------------------------------------------------------------ SCST kept the XE weights


def test_scst_stage_that_kept_its_xe_weights_says_so_in_cells_costs_and_curve(faulty) -> None:
    """Up-Down w/ MIA's SCST model.pt holds epoch 0 (no SCST epoch beat the XE model): each of
    its Table 2 cells, the cost table (best epoch 0) and the curve's caption say it; Up-Down,
    whose SCST epoch 2 won, says nothing."""
    _, _, html, _ = faulty
    for column in range(4):  # BLEU-4, METEOR, ROUGE, CIDEr
        assert 'data-flag="XE weights"' in _cell_html(html, "table2", SCST_KEPT, column)
        assert "XE weights" not in _cell_html(html, "table2", SCST_TRAINED, column)
    notes = re.search(r'data-table="table2".*?<ul class="tablenotes">(.*?)</ul>', html,
                      re.S).group(1)
    assert "Up-Down w/ MIA: its SCST stage kept the XE weights" in notes
    assert "val CIDEr-D 123.45" in notes  # the starting weights' score, x100
    costs = re.search(r'<table class="costs">(.*?)</table>', html, re.S).group(1)
    kept = [r for r in re.findall(r"<tr>(.*?)</tr>", costs, re.S)
            if "updown/<wbr>mia" in r and ">scst<" in r][0]
    assert "<td>0 <span class=\"flag xe\">XE weights</span></td>" in kept
    assert "123.45 <small>val CIDEr-D (x100)" in kept
    caption = re.search(r'data-overlay="table2">.*?<figcaption>(.*?)</figcaption>', html,
                        re.S).group(1)
    assert "dotted line marks where SCST starts" in caption and "1 run(s) kept" in caption


# ------------------------------------------------------------------ one scale per metric


def test_one_scale_per_metric_in_costs_and_curves(faulty) -> None:
    """History values are on coco-caption's 0..1 scale (val_cider 0.6203) and VQA's percent
    (53.7): the page shows 62.03 and 53.70, never 0.6203 beside 53.7000."""
    _, _, html, _ = faulty
    costs = re.search(r'<table class="costs">(.*?)</table>', html, re.S).group(1)
    assert "62.03 <small>val CIDEr-D (x100)" in costs
    assert "53.70 <small>val accuracy (%)" in costs
    assert "0.6203" not in html and "val_cider<" not in html


def test_curves_mark_the_scst_start_and_keep_legends_off_the_lines(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The overlay of an XE + SCST run has a vertical line between the XE and SCST epochs, its
    values x100 as given, and a legend that does not overlap the axes."""
    from mia.report import figures

    drawn: list[Any] = []

    def keep(fig: Any, out_png: Any, dpi: int = 100, tight: bool = False) -> Path:
        fig.canvas.draw()
        drawn.append(fig)
        return Path(out_png)

    monkeypatch.setattr(figures, "save", keep)
    stages = {"xe": [{"epoch": e, "val_cider": 50.0 + e} for e in (1, 2, 3)],
              "scst": [{"epoch": e, "val_cider": 60.0 + e} for e in (1, 2)]}
    figures.plot_overlay({f"run {k}": {123: stages} for k in range(6)}, tmp_path / "o.png",
                         "Table 2", notes={"run 0": "SCST kept the XE weights"})
    figures.plot_training_curves({123: stages, 124: stages}, tmp_path / "c.png", "run")
    for fig in drawn:
        ax = fig.axes[-1]
        vertical = [line for line in ax.lines if len(set(line.get_xdata())) == 1]
        assert [float(line.get_xdata()[0]) for line in vertical] == [3.5]  # after 3 XE epochs
        assert any("SCST starts" in t.get_text() for t in ax.texts)
        legend = ax.get_legend()
        assert legend.get_window_extent().x0 >= ax.get_window_extent().x1 - 1  # off the axes
        assert "x100" in ax.get_ylabel()
    labels = [t.get_text() for t in drawn[0].axes[0].get_legend().get_texts()]
    assert "run 0 (SCST kept the XE weights)" in labels


# ------------------------------------------------------------------ gains: direction, count


def test_gains_are_coloured_by_direction_and_the_page_counts_its_comparisons(faulty) -> None:
    fake, _, html, _ = faulty
    vqa = re.search(r'<table class="gains" data-task="vqa">.*?</table>', html, re.S).group(0)
    cell = re.search(r'data-gain="vqa/ban">.*?data-metric="overall"([^>]*)>(.*?)</td>', vqa,
                     re.S)
    assert 'data-direction="worse"' in cell.group(1)
    assert 'class="worse"' in cell.group(2) and "MIA worse" in cell.group(2)
    assert "better" not in cell.group(2) and "excludes" not in cell.group(2)
    assert re.findall(r'<li class="(\w+)">BAN: MIA -\d+\.\d\d Overall', html) == ["worse"]
    # The count of intervals on the page, and Holm's correction over all of them.
    from mia.report.stats import holm

    results = load_results(ReportInputs.from_dict(fake.run_files,
                                                  vqa_annotations=fake.vqa_annotations))
    gains = mia_gains(results, load_paper_results(), GainSettings(resamples=4000, seed=0))
    tested = [g for g in gains if g.interval is not None]
    count = re.search(r"This page makes (\d+) comparisons at once", html)
    assert count and int(count.group(1)) == len(tested) > 10
    expected = holm([g.interval.p_value for g in tested], 0.05)
    assert [g.holm for g in tested] == expected and 0 < sum(expected) < len(expected)
    assert re.search(rf"{sum(expected)} of them still exclude", html) and "Holm" in html


def test_holm_step_down_against_hand_worked_cases() -> None:
    from mia.report.stats import holm

    # m = 4, alpha = 0.05: thresholds 0.0125, 0.0167, 0.025, 0.05 for the sorted p-values.
    assert holm([0.01, 0.04, 0.03, 0.005], 0.05) == [True, False, False, True]
    assert holm([0.01, 0.015, 0.02, 0.049], 0.05) == [True, True, True, True]
    assert holm([0.01, 0.015, 0.03, 0.049], 0.05) == [True, True, False, False]  # 0.03 > 0.025
    assert holm([0.2, 0.001], 0.05) == [False, True]
    assert holm([], 0.05) == []


def test_bootstrap_p_value_agrees_with_the_interval() -> None:
    from mia.report.stats import bootstrap_gain

    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, 400)
    for shift in (0.0, 0.05, 0.3, -0.3):
        i = bootstrap_gain(base, base + shift + rng.normal(0, 1, 400), n_resamples=4000)
        assert i.excludes_zero == (i.p_value < 0.05) or abs(i.p_value - 0.05) < 0.01
    constant = bootstrap_gain(np.zeros(50), np.zeros(50), n_resamples=100)
    assert constant.p_value == 1.0 and constant.direction == "neutral"


def test_one_point_estimate_per_claim(faulty) -> None:
    """METEOR's interval is on the mean per-image METEOR, the table on corpus METEOR: the gains
    table and the sentence give the same number (the tables' difference), the other only in
    the note."""
    _, _, html, _ = faulty
    row = re.search(rf'<tr data-gain="{METEOR_RUN}">(.*?)</tr>', html, re.S).group(1)
    meteor = re.search(r'data-metric="METEOR"[^>]*>(.*?)</td>', row, re.S).group(1)
    assert re.search(r">\+5\.00(&dagger;)?<", meteor)
    sentence = re.search(r"Visual Regional Attention: MIA ([+-]\d+\.\d\d) METEOR", html)
    assert sentence.group(1) == "+5.00"


# ------------------------------------------------------------------ constant predictions


def test_constant_predictions_are_flagged_in_tables_and_gains(faulty) -> None:
    """A captioner that writes one caption for every image, and VQA models answering '2' to
    every Number question: their cells (Number only, for VQA) and gains say 'constant'."""
    _, _, html, log = faulty
    base = [_cell_html(html, "table1", CONSTANT_CAPTIONS, k) for k in range(7)]
    assert all('data-flag="constant"' in c for c in base)
    assert not any('data-flag="constant"' in _cell_html(html, "table1", VARIED_CAPTIONS, k)
                   for k in range(1, 7))
    notes = re.search(r'data-table="table1".*?<ul class="tablenotes">(.*?)</ul>', html,
                      re.S).group(1)
    assert "constant predictions: 'a red square' for all 120 images" in htmllib.unescape(notes)
    ban = [_cell_html(html, "table3", "vqa/ban/base", k) for k in range(6)]
    assert 'data-flag="constant"' in ban[4]  # Number
    assert not any('data-flag="constant"' in c for c in ban[:4] + ban[5:])
    assert "'2' for all 80 number questions" in htmllib.unescape(html)
    vqa = re.search(r'<table class="gains" data-task="vqa">.*?</table>', html, re.S).group(0)
    number = re.search(r'data-gain="vqa/ban">.*?data-metric="number"[^>]*>(.*?)</td>', vqa,
                       re.S).group(1)
    assert 'data-flag="constant"' in number
    assert "'a red square' for all 120 images" in log


# ------------------------------------------------------------------ numbers left out


def test_nan_seed_is_named_in_its_cell_and_left_out_of_its_interval(faulty) -> None:
    """Seed 2 of Visual Attention w/ MIA has CIDEr NaN: the cell is the mean of seeds 1 and 3
    and says '2 of 3 seeds' with the seed, the value and the file; the interval uses the same
    two seeds (it used three while the cell showed n=2 without a word)."""
    fake, facts, html, log = faulty
    cell = _cell_html(html, "table1", NAN_SEED_RUN, 6)
    assert "(n=2)" in cell and 'data-flag="2 of 3 seeds"' in cell
    expected = np.mean([fake.per_image_cider[(NAN_SEED_RUN, s)].mean() for s in (1, 3)])
    assert f">{expected:.2f}<" in cell
    said = f"seed 2 left out: CIDEr is NaN in {facts['nan_seed_file']}"
    assert said in html
    assert "seed 2 left out of its CIDEr cell and interval: CIDEr is NaN" in log
    results = load_results(ReportInputs.from_dict(fake.run_files))
    gain = {(g.baseline, g.metric): g for g in mia_gains(results, load_paper_results(),
                                                          GainSettings(resamples=200))}
    interval = gain[("captioning/visual_attention", "CIDEr")].interval
    assert (interval.n_base_seeds, interval.n_mia_seeds) == (3, 2)
    assert results[NAN_SEED_RUN].value("ROUGE_L").n == 3  # seed 2's other metrics stay


@pytest.mark.parametrize("run", sorted(NOT_NUMBERS))
def test_a_metric_that_is_not_a_number_says_so(faulty, run: str) -> None:
    _, facts, html, log = faulty
    cell = _cell_html(html, "table1", run, 0)
    assert "n/a (not a number)" in cell  # was a bare dash
    said = f"seed 123: Bleu_1 is {NOT_NUMBERS[run][1]} in {facts['not_number_files'][run]}"
    assert said in htmllib.unescape(html)
    assert f"Bleu_1 is {NOT_NUMBERS[run][1]}" in log


def test_a_nan_per_image_score_names_the_run_and_keeps_the_report(faulty) -> None:
    _, facts, html, log = faulty  # rendering used to raise, naming no run
    row = re.search(r'<tr data-gain="captioning/concept_attention">(.*?)</tr>', html,
                    re.S).group(1)
    cider = re.search(r'data-metric="CIDEr"[^>]*>(.*?)</td>', row, re.S).group(1)
    assert "no interval" in cider
    message = (f"run {NAN_PER_IMAGE_RUN} seed 123: per-item CIDEr is not finite for 1 of 120 "
               f"items (first: item 1005) in {facts['nan_per_image_file']}")
    assert message in html and message in log
    assert "[" in re.search(r'data-metric="ROUGE_L"[^>]*>(.*?)</td>', row, re.S).group(1)


# ------------------------------------------------------------------ costs and code


def test_pipeline_costs_count_every_stage_not_only_training(faulty) -> None:
    _, _, html, _ = faulty
    table = re.search(r'<table class="costs pipeline">(.*?)</table>', html, re.S).group(1)
    stages = dict(re.findall(r'<tr data-stage="([a-z]+)"[^>]*><td class="text">[^<]*(?:<b>'
                             r'[^<]*</b>)?</td><td>(\d+)</td>', table))
    assert stages == {"data": "1", "features": "2", "training": "2", "decoding": "1",
                      "evaluation": "1", "other": "1", "all": "8"}  # render_report excluded
    total = re.search(r'data-stage="all".*?</tr>', table, re.S).group(0)
    # 16,260 s = 4.517 h; GPU-h: the paper config requests 1 GPU for grid features, concepts,
    # training and decoding: 7200 + 1800 + 3600 + 1800 + 900 s = 4.250 h
    assert "<td>4.517</td>" in total and "<td>4.250</td>" in total
    features = re.search(r'data-stage="features".*?</tr>', table, re.S).group(0)
    assert "build_concept_store" in features and "extract_grid_features" in features


def test_software_table_names_the_commit_and_the_dirty_flag(faulty, tmp_path: Path) -> None:
    from mia.report.environment import git_commit

    html = faulty[2]
    head = subprocess.run(["git", "-C", str(Path(__file__).parents[1]), "rev-parse", "HEAD"],
                          capture_output=True, text=True)
    if head.returncode == 0:
        row = re.search(r'<tr data-software="code \(git commit\)">(.*?)</tr>', html,
                        re.S).group(1)
        assert head.stdout.strip() in row and ("(clean)" in row or "(dirty)" in row)
    repo = tmp_path / "repo"
    repo.mkdir()
    env = ["-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "a.txt").write_text("1")
    subprocess.run(["git", "-C", str(repo), "add", "a.txt"], check=True)
    subprocess.run(["git", "-C", str(repo), *env, "commit", "-qm", "x"], check=True)
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    assert git_commit(repo) == f"{commit} (clean)"
    (repo / "a.txt").write_text("2")
    assert git_commit(repo) == f"{commit} + uncommitted changes to 1 tracked file(s) (dirty)"
    assert git_commit(tmp_path).startswith("unknown (")


# ------------------------------------------------------------------ the demo world, Figure 4


def test_demo_paper_columns_are_context_said_once_and_titles_say_demo(
        repo_root: Path, tmp_path: Path, faulty) -> None:
    fake = _fake(repo_root, tmp_path / "runs", ["table1", "table4"], demo=True)
    fake.config["report"]["figures"] = ["figure4"]
    html = fake.render(tmp_path / "report").read_text()
    t1 = re.search(r'data-table="table1".*?</table>', html, re.S).group(0)
    diffs = re.findall(r'<span class="diff ([a-z]+)">', t1)
    assert diffs and set(diffs) == {"context"}  # no green/red "ours - paper" on the demo
    assert html.count('id="demo-context"') == 1 and "context only" in html
    heading = re.search(r'<h2 id="table4">(.*?)</h2>', html).group(1)
    assert "(demo world)" in heading
    assert "I<sub>N</sub>" in heading and "T<sub>N</sub>" in heading and "I_N" not in heading
    assert "w/ I<sub>N</sub>" in row_html(html, "table4", "captioning/visual_attention/mia_visual")
    # Figure 4: SPICE is n/a for every run (no CoreNLP jars): no empty panel, the caption says.
    caption = re.search(r'id="fig-figure4".*?</figure>', html, re.S).group(0)
    assert "No SPICE panel: no CoreNLP jars for every run" in caption
    # On the paper's data the differences keep their colour, and nothing says "demo".
    t1 = re.search(r'data-table="table1".*?</table>', faulty[2], re.S).group(0)
    assert set(re.findall(r'<span class="diff ([a-z]+)">', t1)) <= {"pos", "neg"}
    assert 'id="demo-context"' not in faulty[2]


def test_figure4_draws_a_panel_only_for_metrics_some_run_has(repo_root: Path,
                                                              tmp_path: Path) -> None:
    from mia.report.figure4 import drawn_metrics, figure4_data

    fake = _fake(repo_root, tmp_path / "runs", ["table4"])
    results = load_results(ReportInputs.from_dict(fake.run_files))
    data = figure4_data(results)
    assert "SPICE" in data.metrics and data.missing_reason["SPICE"]
    assert drawn_metrics(data) == [m for m in data.metrics if m != "SPICE"]

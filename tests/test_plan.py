"""``mia plan``: the jobs of ``snakemake -n`` priced by a FLOP model (mia.plan). The FLOP counts
are checked against published figures; the CLI against a canned dry run (a few seconds: the
models are built on the meta device)."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from mia.cli import main
from mia.config import load_config
from mia.plan import CNN_KIND, CostModel, Job, backbone_flops, make_plan, parse_dry_run

REPO = Path(__file__).resolve().parent.parent

DRY_RUN = """Building DAG of jobs...
Job stats:
job                count
---------------  -------
all                    1
train_captioner        2
total                  3

[Sun Dec  6 03:00:00 2026]
rule train_captioner:
    input: results/paper/data/captions.h5
    output: results/paper/runs/captioning/visual_attention/base/s123/xe/model.pt
    jobid: 7
    reason: Missing output files
    wildcards: baseline=visual_attention, variant=base, seed=123
    resources: tmpdir=<TBD>, gpu=1

[Sun Dec  6 03:00:00 2026]
localrule build_caption_store:
    input: resources/coco/karpathy/dataset_coco.json
    output: results/paper/data/captions.h5
    jobid: 3

[Sun Dec  6 03:00:00 2026]
rule train_captioner:
    wildcards: baseline=updown, variant=mia, seed=123
    resources: gpu=1

localrule all:
    input: x
    jobid: 0
Job stats:
This was a dry-run (flag -n). The order of jobs does not reflect the order of execution.
"""


@pytest.fixture(scope="module")
def paper() -> dict:
    return load_config([REPO / "config.yaml"])


def test_parse_dry_run_finds_every_job_and_its_wildcards():
    jobs = parse_dry_run(DRY_RUN)
    assert jobs == [
        Job("train_captioner", {"baseline": "visual_attention", "variant": "base",
                                "seed": "123"},
            ("results/paper/runs/captioning/visual_attention/base/s123/xe/model.pt",)),
        Job("build_caption_store", {}, ("results/paper/data/captions.h5",)),
        Job("train_captioner", {"baseline": "updown", "variant": "mia", "seed": "123"})]


def test_resnet_flops_are_the_published_ones():
    """ResNet-152 at 224 px: 11.56 GMACs = 23.1 GFLOPs; ResNet-50: 4.1 GMACs (torchvision's
    model cards, without the classifier head: within 1%)."""
    assert backbone_flops("resnet152", 224) == pytest.approx(2 * 11.51e9, rel=0.01)
    assert backbone_flops("resnet50", 224) == pytest.approx(2 * 4.09e9, rel=0.01)


def test_batches_by_image_cost_a_fifth_of_the_cnn(paper):
    by_image = CostModel(paper).cost(Job("train_captioner", {"baseline": "visual_attention",
                                                              "variant": "base"}))
    caption = json.loads(json.dumps(paper))
    caption["captioning"]["train"]["batch_by"] = "caption"
    by_caption = CostModel(caption).cost(Job("train_captioner", {
        "baseline": "visual_attention", "variant": "base"}))
    val = 30 * 5000 * backbone_flops("resnet152", 224)  # validation: once per image either way
    ratio = (by_image.flops[CNN_KIND] - val) / (by_caption.flops[CNN_KIND] - val)
    assert ratio == pytest.approx(1 / 5)
    assert by_image.kind == "captioning XE: LSTM decoders + MIA"


def test_plan_totals_and_the_cli(paper, tmp_path, capsys):
    plan = make_plan(parse_dry_run(DRY_RUN), paper)
    assert plan.total_hours == pytest.approx(sum(k.hours for k in plan.kinds))
    assert {k.kind for k in plan.kinds} >= {CNN_KIND, "CPU"}
    fake = tmp_path / "snakemake"
    fake.write_text(f"#!{sys.executable}\nimport sys\nsys.stdout.write({DRY_RUN!r})\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    throughput = tmp_path / "throughput.json"
    throughput.write_text(json.dumps({"utilisation": {CNN_KIND: 0.5}}))
    assert main(["plan", "--snakemake", str(fake), "--throughput", str(throughput),
                 "--json", str(tmp_path / "plan.json")]) == 0
    out = capsys.readouterr().out
    assert "| captioning XE: CNN fine-tuning | (in the XE jobs) |" in out
    assert "50% (measured)" in out and "**total** | 3 |" in out
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert len(saved["jobs"]) == 3 and saved["total_hours"] > 0


def test_region_extraction_is_a_gpu_job_only_with_the_detector(paper):
    """What source: auto resolved to is read off the planned store's name."""
    planned = parse_dry_run("rule extract_region_features:\n    output: "
                            "results/paper/features/regions_bottom_up_tsv.h5\n    jobid: 4\n")
    assert planned == [Job("extract_region_features", {},
                           ("results/paper/features/regions_bottom_up_tsv.h5",))]
    tsv = CostModel(paper).cost(planned[0])
    assert tsv.kind == "CPU" and not tsv.flops  # the released TSVs are read, not computed
    run = CostModel(paper).cost(Job("extract_region_features", {},
                                    ("results/paper/features/regions_bottom_up.h5",)))
    assert run.kind == "region features (bottom-up Faster R-CNN)"
    detector = json.loads(json.dumps(paper))
    detector["features"]["regions"]["source"] = "bottom_up"
    cost = CostModel(detector).cost(Job("extract_region_features"))
    per_image = cost.flops[cost.kind] / 123_287
    assert cost.kind == "region features (bottom-up Faster R-CNN)"
    assert 0.5e12 < per_image < 3e12  # ResNet-101 C4 at 600 x 800 + res5 on 300 RoIs

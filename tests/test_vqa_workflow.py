"""The VQA rules' scripts outside Snakemake (preemption, retry, a changed config), and Table 3's
whole path through Snakemake on the test config (slow: minutes).

workflow_scripts/train_vqa.py keeps its checkpoints outside the rule's outputs, exits 75 when
preempted, resumes on the next attempt, publishes model.pt and history.json only at the end, and
never resumes a checkpoint made with another config or other inputs. It runs here with a stand-in
`snakemake` object on the tiny real-format stores of tests/vqa_fixtures.py.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from vqa_fixtures import build_vqa_world

from mia.runlog import stop_job_logging
from mia.training.checkpoint import load_checkpoint

SCRIPTS = Path(__file__).resolve().parent.parent / "workflow_scripts"
MODEL = {"hidden": 16, "embed_dim": 8, "concept_embed_dim": 8, "mia_d_model": 8,
         "mia_heads": 2, "mia_d_ff": 16, "glimpses": 1}
TRAIN = {"epochs": 2, "batch_size": 16, "lr": 5e-3, "lr_schedule": "warmup_step",
         "checkpoint_every": 3, "log_every": 2, "device": "cpu", "progress": False,
         "val_batch_size": 8, "seed": 1}


class Named(dict):
    """Snakemake's Namedlist as the scripts use it: attributes and ``.get``."""

    __getattr__ = dict.__getitem__


pytestmark = pytest.mark.usefixtures("one_thread")  # the same float sums in the same order


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_vqa_world(tmp_path_factory.mktemp("vqa_workflow"))


def fake_snakemake(world, run_dir: Path, train: dict, trainval: bool = False) -> SimpleNamespace:
    inputs = Named(vqa=str(world.vqa), features=str(world.regions),
                   concepts=str(world.concepts))
    if not trainval:
        inputs.update(val_questions=str(world.questions["val"]),
                      val_annotations=str(world.annotations["val"]))
    return SimpleNamespace(
        input=inputs, rule="train_vqa_trainval" if trainval else "train_vqa", threads=1,
        output=Named(model=str(run_dir / "model.pt"), history=str(run_dir / "history.json")),
        params=Named(model=MODEL, train=train, checkpoints=str(run_dir / "checkpoints")),
        wildcards=Named(baseline="ban", variant="mia", seed="7"), log=[str(run_dir / "train.log")])


def run_script(smk: SimpleNamespace, monkeypatch: pytest.MonkeyPatch,
               script: str = "train_vqa.py") -> None:
    monkeypatch.syspath_prepend(str(SCRIPTS))
    Path(smk.log[0]).parent.mkdir(parents=True, exist_ok=True)
    try:
        runpy.run_path(str(SCRIPTS / script), init_globals={"snakemake": smk},
                       run_name="__main__")
    finally:
        stop_job_logging()  # the script tees stderr into its log; give pytest its stderr back


def preempt_at_step(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """SIGTERM this process (as Slurm does before the time limit) during training step ``step``."""
    import mia.vqa.train as vqa_train

    plain, calls = vqa_train.VQATask.loss, [0]

    def loss(self, batch, epoch):
        calls[0] += 1
        if calls[0] == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return plain(self, batch, epoch)

    monkeypatch.setattr(vqa_train.VQATask, "loss", loss)


def strip_wall(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.endswith("wall_s")} for row in history]


def test_preempted_attempt_exits_75_and_the_retry_resumes(world, tmp_path, monkeypatch):
    straight = fake_snakemake(world, tmp_path / "straight", TRAIN)
    run_script(straight, monkeypatch)

    smk = fake_snakemake(world, tmp_path / "preempted", TRAIN)
    with monkeypatch.context() as m:
        preempt_at_step(m, 5)
        with pytest.raises(SystemExit) as stop:
            run_script(smk, m)
    assert stop.value.code == 75  # EX_TEMPFAIL: the scheduler retries, not a crash
    assert not Path(smk.output.model).exists() and not Path(smk.output.history).exists()
    assert load_checkpoint(tmp_path / "preempted/checkpoints/last.pt")["state"][
        "global_step"] == 5

    run_script(smk, monkeypatch)  # the retry
    log = Path(smk.log[0]).read_text()
    assert "attempt 2" in log and "resuming at epoch 1, batch 5" in log
    assert "best official val accuracy" in log
    expected = json.loads(Path(straight.output.history).read_text())
    assert strip_wall(json.loads(Path(smk.output.history).read_text())) == strip_wall(expected)
    a, b = load_checkpoint(straight.output.model), load_checkpoint(smk.output.model)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert b["vqa_model"]["baseline"] == "ban" and b["vqa_model"]["feature_dim"] > 0


def test_changed_config_clears_stale_checkpoints(world, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    smk = fake_snakemake(world, run_dir, TRAIN)
    with monkeypatch.context() as m:
        preempt_at_step(m, 4)
        with pytest.raises(SystemExit):
            run_script(smk, m)
    assert (run_dir / "checkpoints/last.pt").exists()

    changed = {**TRAIN, "lr": 2e-3}  # a new learning rate: the half-trained run is stale
    run_script(fake_snakemake(world, run_dir, changed), monkeypatch)
    log = Path(smk.log[0]).read_text()
    assert "config or inputs changed since these checkpoints (config: lr)" in log
    assert "starting over" in log and log.count("resuming at") == 0
    fresh = fake_snakemake(world, tmp_path / "fresh", changed)
    run_script(fresh, monkeypatch)
    assert strip_wall(json.loads((run_dir / "history.json").read_text())) == strip_wall(
        json.loads(Path(fresh.output.history).read_text()))
    assert json.loads((run_dir / "checkpoints/fingerprint.json").read_text())["config"]["lr"] \
        == 2e-3


def test_trainval_rule_needs_no_val_files_and_keeps_the_last_epoch(world, tmp_path,
                                                                  monkeypatch):
    smk = fake_snakemake(world, tmp_path / "trainval",
                         {**TRAIN, "train_splits": ["train", "val"]}, trainval=True)
    run_script(smk, monkeypatch)
    history = json.loads(Path(smk.output.history).read_text())
    assert [r["trainval_epoch"] for r in history] == [1.0, 2.0]
    assert "val_accuracy" not in history[-1]
    assert load_checkpoint(smk.output.model)["epoch"] == 2
    assert "keeping the last epoch (2)" in Path(smk.log[0]).read_text()


# ---------------------------------------------------------------- the whole path in Snakemake

RUNS = [f"{b}/{v}" for b in ("updown", "ban") for v in ("base", "mia")]
SEED = 123  # config.yaml seeds.default, which the test config keeps for these runs


@pytest.mark.slow
@pytest.mark.java
def test_table3_and_server_files_through_snakemake(workflow_run: Path) -> None:
    """Table 3's jobs and the server path in the test DAG (the session's run, shared with
    tests/test_workflow_demo.py): the scored runs and the evaluation server's files."""
    runs = workflow_run / "results/test/runs/vqa"
    server = [f"results/test/runs/vqa/{r}/s{SEED}/server_{s}.json"
              for r in RUNS for s in ("test-dev", "test-std")]

    annotations = json.loads((workflow_run / "results/test/world/vqa/"
                              "v2_mscoco_val2014_annotations.json").read_text())["annotations"]
    for run in RUNS:
        scored = json.loads((runs / run / f"s{SEED}/metrics_val.json").read_text())
        assert set(scored) == {"overall", "perAnswerType", "perQuestionType", "perQuestion"}
        assert set(scored["perAnswerType"]) == {"yes/no", "number", "other"}
        assert len(scored["perQuestion"]) == len(annotations)
        # The metric that selected model.pt is the one reported: best epoch's val accuracy.
        history = json.loads((runs / run / f"s{SEED}/history.json").read_text())
        best = max(history, key=lambda r: r["val_accuracy"])
        assert scored["overall"] == best["val_accuracy"], run
        assert scored["perAnswerType"]["number"] == best["val_accuracy_number"], run
        assert load_checkpoint(runs / run / f"s{SEED}/model.pt")["epoch"] == best["epoch"]

    world = workflow_run / "results/test/world/vqa"
    for path in server:
        split = path.rsplit("_", 1)[1].removesuffix(".json")
        name = "test-dev2015" if split == "test-dev" else "test2015"
        questions = json.loads((world / f"v2_OpenEnded_mscoco_{name}_questions.json")
                               .read_text())["questions"]
        written = json.loads((workflow_run / path).read_text())
        assert [r["question_id"] for r in written] == [q["question_id"] for q in questions]
    trainval = json.loads((runs / f"ban/mia/s{SEED}/trainval/history.json").read_text())
    assert trainval and all("val_accuracy" not in r for r in trainval)
    for rule in ("generate_demo_test_set", "build_vqa_test_store", "extract_test_grid_features",
                 "extract_test_region_features", "build_test_concept_store/regions",
                 f"train_vqa_trainval/ban/mia/s{SEED}", f"answer_vqa_server/ban/mia/s{SEED}"):
        assert (workflow_run / f"results/test/logs/{rule}.log").is_file(), rule
        assert (workflow_run / f"results/test/benchmarks/{rule}.tsv").is_file(), rule

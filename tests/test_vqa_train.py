"""VQA training (mia.vqa.train): the references' learning rates, selection on the official val
accuracy, train + val runs that keep the last epoch, GloVe on a fresh start only, and exact resume
after SIGUSR1 mid-epoch and SIGTERM during validation.

Data: a 24-image demo world with real-format stores (tests/vqa_fixtures.py). Run as a script
(``python tests/test_vqa_train.py WORLD_DIR OUT_DIR``), this file trains in a fresh process, which
the resume test starts, signals and restarts.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from vqa_fixtures import FEATURE_DIM, build_vqa_world, vqa_world

import mia.vqa.train as vqa_train
from mia.data.loaders import VQAData
from mia.evaluation.vqa import evaluate_vqa
from mia.training import PREEMPTED_EXIT_CODE
from mia.training.checkpoint import load_checkpoint
from mia.vqa.predict import answer_split
from mia.vqa.train import VQATrainConfig, learning_rate, train_vqa

BATCH = 16


pytestmark = pytest.mark.usefixtures("one_thread")  # the same float sums in the same order


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_vqa_world(tmp_path_factory.mktemp("vqa_world"))


def load_data(world) -> VQAData:
    return VQAData.from_stores(world.vqa, world.regions, concepts_h5=world.concepts)


def tiny(baseline: str = "ban", variant: str = "mia", **train) -> VQATrainConfig:
    model = {"baseline": baseline, "variant": variant, "feature_dim": FEATURE_DIM, "hidden": 24,
             "embed_dim": 12, "concept_embed_dim": 12, "mia_d_model": 16, "mia_heads": 2,
             "mia_d_ff": 24, "glimpses": 2}
    values = {"model": model, "epochs": 3, "batch_size": BATCH, "lr": 5e-3, "seed": 5,
              "val_batch_size": 7, "checkpoint_every": 4, "log_every": 0, "progress": False,
              "device": "cpu", **train}
    return VQATrainConfig.from_dict(values)


def val_files(world) -> dict:
    return {"val_questions": world.questions["val"], "val_annotations": world.annotations["val"]}


def strip_wall(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.endswith("wall_s")} for row in history]


# ---------------------------------------------------------------- learning rates


# The rates the reference's own code sets (jnhwkim/ban-vqa train.py, its warm-up/decay lines run
# in a scratch folder with a stub optimiser for 20 epochs): lr_default 1e-3 with an eval loader,
# 7e-4 without one (its train + val mode).
BAN_REFERENCE = {
    1e-3: [5e-4, 1e-3, 1.5e-3, 2e-3, 2e-3, 2e-3, 2e-3, 2e-3, 2e-3, 2e-3, 5e-4, 5e-4, 1.25e-4,
           1.25e-4, 3.125e-05, 3.125e-05, 7.8125e-06, 7.8125e-06, 1.953125e-06, 1.953125e-06],
    7e-4: [3.5e-4, 7e-4, 1.05e-3, 1.4e-3, 1.4e-3, 1.4e-3, 1.4e-3, 1.4e-3, 1.4e-3, 1.4e-3, 3.5e-4,
           3.5e-4, 8.75e-05, 8.75e-05, 2.1875e-05, 2.1875e-05, 5.46875e-06, 5.46875e-06,
           1.3671875e-06, 1.3671875e-06],
}


@pytest.mark.parametrize("lr", sorted(BAN_REFERENCE))
def test_ban_schedule_equals_the_reference_per_epoch(lr):
    cfg = tiny(lr=lr, lr_schedule="warmup_step", warmup_factors=[0.5, 1.0, 1.5, 2.0],
               lr_decay_epochs=[11, 13, 15, 17, 19], lr_decay_factor=0.25)
    ours = [learning_rate(cfg, epoch) for epoch in range(1, 21)]
    assert ours == pytest.approx(BAN_REFERENCE[lr], rel=1e-12)
    # A decay epoch inside the warm-up is ignored, as the reference's `if warm-up elif decay`.
    early = tiny(lr=1.0, lr_schedule="warmup_step", lr_decay_epochs=[2, 6])
    assert [learning_rate(early, e) for e in range(1, 8)] == [0.5, 1.0, 1.5, 2.0, 2.0, 0.5, 0.5]


def test_updown_rate_is_adamax_default_and_constant():
    cfg = VQATrainConfig()  # the Up-Down reference: Adamax(params), 30 epochs, batch 512
    adamax = torch.optim.Adamax([torch.zeros(1, requires_grad=True)]).defaults
    assert (cfg.lr, cfg.betas, cfg.eps, cfg.weight_decay) == (
        adamax["lr"], adamax["betas"], adamax["eps"], adamax["weight_decay"])
    assert (cfg.epochs, cfg.batch_size, cfg.grad_clip_norm) == (30, 512, 0.25)
    assert {learning_rate(cfg, e) for e in range(1, 31)} == {2e-3}


def test_config_refuses_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lr_shedule'\]"):
        VQATrainConfig.from_dict({"lr_shedule": "constant"})
    with pytest.raises(ValueError, match=r"vqa\.train\.model: unknown key\(s\) \['hiden'\]"):
        VQATrainConfig.from_dict({"model": {"hiden": 3}})
    with pytest.raises(ValueError, match="train_splits"):
        VQATrainConfig.from_dict({"train_splits": ["train", "test"]})
    with pytest.raises(ValueError, match="lr_schedule"):
        VQATrainConfig.from_dict({"lr_schedule": "noam"})
    assert VQATrainConfig.from_dict({"train_splits": ["train", "val"]}).score_key == \
        "trainval_epoch"


# ---------------------------------------------------------------- selection and modes


def test_history_and_best_pt_carry_the_official_val_accuracy(world, tmp_path):
    data = load_data(world)
    cfg = tiny(lr_schedule="warmup_step", epochs=3)
    result = train_vqa(cfg, data, tmp_path, **val_files(world))
    history = json.loads((tmp_path / "history.json").read_text())
    assert history == result.history and [r["epoch"] for r in history] == [1, 2, 3]
    assert [r["lr"] for r in history] == pytest.approx([5e-3 * f for f in (0.5, 1.0, 1.5)])
    types = {"yes/no", "number", "other"}
    assert all(set(r) >= {"train_loss", "train_soft_score", "val_accuracy", "val_soft_score"}
               | {f"val_accuracy_{t}" for t in types} for r in history)
    scores = [r["val_accuracy"] for r in history]
    assert result.best_score == max(scores) and result.best_epoch == scores.index(max(scores)) + 1
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == result.best_epoch
    assert best["metrics"] == {k: v for k, v in history[result.best_epoch - 1].items()
                               if k not in ("epoch", "steps", "train_loss", "nonfinite_steps",
                                            "lr", "wall_s", "val_wall_s")}
    # The recorded numbers are the official metric of best.pt's answers, recomputed from scratch.
    answers = answer_split(tmp_path / "best.pt", data, "val", tmp_path / "answers.json")
    official = evaluate_vqa(world.questions["val"], world.annotations["val"],
                            tmp_path / "answers.json")
    row = history[result.best_epoch - 1]
    assert row["val_accuracy"] == official["overall"]
    assert {t: row[f"val_accuracy_{t}"] for t in types} == official["perAnswerType"]
    val_ids = [q["question_id"] for q in json.loads(world.questions["val"].read_text())[
        "questions"]]
    assert sorted(a["question_id"] for a in answers) == sorted(val_ids)
    assert {a["answer"] for a in answers} <= set(data.answer_vocab)


def test_selection_follows_the_official_accuracy_not_the_soft_score(world, tmp_path,
                                                                   monkeypatch):
    """The loop keeps the epoch whose evaluate_vqa overall is highest, whatever the references'
    soft score says: evaluate_vqa is spied on and its overall replaced by a scripted sequence."""
    scripted = iter([40.0, 70.0, 55.0])
    calls = []

    def spy(questions, annotations, results, config=None):
        out = evaluate_vqa(questions, annotations, results, config)
        calls.append(out["overall"])
        return {**out, "overall": next(scripted)}

    monkeypatch.setattr(vqa_train, "evaluate_vqa", spy)
    result = train_vqa(tiny(), load_data(world), tmp_path, **val_files(world))
    assert len(calls) == 3
    assert [r["val_accuracy"] for r in result.history] == [40.0, 70.0, 55.0]
    assert result.best_epoch == 2 and load_checkpoint(tmp_path / "best.pt")["epoch"] == 2


def test_trainval_run_validates_nothing_and_keeps_the_last_epoch(world, tmp_path):
    data = load_data(world)
    cfg = tiny(train_splits=["train", "val"], epochs=3)
    result = train_vqa(cfg, data, tmp_path)  # no val files needed
    n = len(data.split_rows(["train", "val"]))
    assert [r["steps"] for r in result.history] == [math.ceil(n / BATCH)] * 3
    assert all(not any(k.startswith("val_") for k in r if k != "val_wall_s")
               and r["train_soft_score"] >= 0 for r in result.history)
    assert [r["trainval_epoch"] for r in result.history] == [1.0, 2.0, 3.0]
    best, last = load_checkpoint(tmp_path / "best.pt"), load_checkpoint(tmp_path / "last.pt")
    assert best["epoch"] == 3 and best["train_splits"] == ["train", "val"]
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in last["model"])
    with pytest.raises(ValueError, match="pass val_questions and val_annotations"):
        train_vqa(tiny(), data, tmp_path / "local")


def test_glove_initialises_only_a_fresh_run(world, tmp_path, monkeypatch):
    from mia.vqa.models import VQAModel

    data = load_data(world)
    words = [*data.question_vocab[2:6], *data.concept_words[:3]]
    glove = tmp_path / "glove.txt"
    rng = np.random.default_rng(0)
    glove.write_text("".join(f"{w} {' '.join(f'{x:.4f}' for x in rng.normal(size=12))}\n"
                             for w in words))
    reads = []
    original = VQAModel.init_word_vectors

    def counted(self, *args, **kwargs):
        reads.append(args[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(VQAModel, "init_word_vectors", counted)
    train_vqa(tiny(epochs=1), data, tmp_path / "run", glove=glove, **val_files(world))
    first = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    row = data.question_vocab.index(words[0])
    assert reads == [glove]
    train_vqa(tiny(epochs=2), data, tmp_path / "run", glove=glove, **val_files(world))  # resumes
    assert reads == [glove], "a resumed run must keep its trained embeddings"
    assert not torch.equal(first["question.embedding.weight"][row],
                           torch.zeros_like(first["question.embedding.weight"][row]))


# ---------------------------------------------------------------- exact resume after signals


def _run(world_root: Path, out_dir: Path, stop_at_step: int | None = None,
         signum: int = signal.SIGTERM, stop_in_validation: bool = False
         ) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if stop_at_step is not None:
        env["MIA_TEST_SIGNAL_AT_STEP"] = f"{stop_at_step}:{int(signum)}"
    if stop_in_validation:  # at the second batch of the first validation this process runs
        env["MIA_TEST_SIGNAL_IN_VALIDATION"] = str(int(signum))
    return subprocess.run([sys.executable, __file__, str(world_root), str(out_dir)], env=env,
                          capture_output=True, text=True, timeout=300)


def test_sigterm_then_resume_equals_uninterrupted_run(world, tmp_path):
    data = load_data(world)
    steps = data.num_train_batches(BATCH)
    train_vqa(tiny(), data, tmp_path / "straight", **val_files(world))

    run_dir = tmp_path / "interrupted"
    # SIGUSR1 (Slurm's warning) mid-epoch 1, after a snapshot at step 4, so last.pt is rewritten
    # at the stop; then SIGTERM while the retry validates epoch 1 (between two val batches).
    for stop_at, signum, in_validation, state in (
            (steps - 1, signal.SIGUSR1, False, (steps - 1, 1, steps - 1, "train")),
            (None, signal.SIGTERM, True, (steps, 1, steps, "validate"))):
        stopped = _run(world.root, run_dir, stop_at, signum, in_validation)
        assert stopped.returncode == PREEMPTED_EXIT_CODE, stopped.stderr[-3000:]
        progress = load_checkpoint(run_dir / "last.pt")["state"]
        assert (progress["global_step"], progress["epoch"], progress["step_in_epoch"],
                progress["phase"]) == state
        assert not list(run_dir.glob("*.tmp-*"))
    assert "while validating epoch 1" in stopped.stderr
    resumed = _run(world.root, run_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming at epoch 1, batch {steps} (validate)" in resumed.stderr

    a = json.loads((tmp_path / "straight" / "history.json").read_text())
    b = json.loads((run_dir / "history.json").read_text())
    assert len(a) == 3 and strip_wall(a) == strip_wall(b)
    for name in ("last.pt", "best.pt"):
        wa = load_checkpoint(tmp_path / "straight" / name)["model"]
        wb = load_checkpoint(run_dir / name)["model"]
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name


def _main(world_root: str, out_dir: str) -> int:
    """Train in this process; signal itself where the environment says."""
    import logging

    from mia.training import Preempted

    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(1)
    world = vqa_world(Path(world_root))
    data = load_data(world)
    stop = os.environ.get("MIA_TEST_SIGNAL_AT_STEP")
    if stop is not None:
        # Counted in the step itself: the batches are made ahead by a prefetch thread.
        stop_at, signum = (int(x) for x in stop.split(":"))
        last = Path(out_dir) / "last.pt"
        done = [load_checkpoint(last)["state"]["global_step"] if last.exists() else 0]
        plain_loss = vqa_train.VQATask.loss

        def loss(self, batch, epoch):
            done[0] += 1
            if done[0] == stop_at:
                os.kill(os.getpid(), signum)  # lands while this step trains
            return plain_loss(self, batch, epoch)

        vqa_train.VQATask.loss = loss  # type: ignore[method-assign]
    in_validation = os.environ.get("MIA_TEST_SIGNAL_IN_VALIDATION")
    if in_validation is not None:
        plain_eval = data.eval_batches

        def eval_batches(split, batch_size):
            for i, batch in enumerate(plain_eval(split, batch_size)):
                if i == 1:
                    os.kill(os.getpid(), int(in_validation))
                yield batch

        data.eval_batches = eval_batches  # type: ignore[method-assign]
    try:
        train_vqa(tiny(), data, out_dir, **val_files(world))
    except Preempted as preempted:
        logging.info("preempted: %s", preempted)
        return preempted.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1], sys.argv[2]))

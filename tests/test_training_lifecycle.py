"""The run lifecycle every trainer shares (mia.training): safe checkpoints, fingerprinted run
folders, SIGINT and stops during validation, the non-finite guard, progress lines, and job logs
that hold every failure."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_captioning_train import ToyCaptionData, _run, _strip_wall, toy_config

from mia.captioning.beam import PAD
from mia.captioning.train import caption_loss, train_captioner
from mia.training import (
    INTERRUPTED_EXIT_CODE,
    CheckpointError,
    NonFiniteTraining,
    Preempted,
    RunDirectory,
    fingerprint,
    load_checkpoint,
)

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- checkpoints are data, not code


class _RunsAShellCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_checkpoint_does_not_run_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    torch.save({"model": _RunsAShellCommand(marker)}, path)  # pickles a call of os.system
    # What the old loader (weights_only=False) did with such a file: run the command.
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CheckpointError, match=r"model\.pt: refused to load"):
        load_checkpoint(path)
    assert not marker.exists()


def test_training_checkpoints_load_weights_only(tmp_path):
    torch.set_num_threads(1)
    train_captioner(toy_config(epochs=1), ToyCaptionData(), tmp_path)
    for name in ("last.pt", "best.pt"):
        ck = torch.load(tmp_path / name, weights_only=True)  # raises on anything but data
        assert "model" in ck
    rng = load_checkpoint(tmp_path / "last.pt")["rng"]
    assert torch.is_tensor(rng["numpy"]["keys"]) and isinstance(rng["python"]["internal"], list)


# ---------------------------------------------------------------- run folders


def test_run_directory_fingerprint_and_attempts(tmp_path):
    store = tmp_path / "features.h5"
    store.write_bytes(b"x" * 10)
    stamp = fingerprint({"lr": 1e-3}, {"features": store})
    run = RunDirectory(tmp_path / "ck", stamp)
    assert run.prepare() == 1
    (run.path / "last.pt").write_bytes(b"progress")
    assert RunDirectory(tmp_path / "ck", stamp).prepare() == 2  # same run: kept, counted
    assert (run.path / "last.pt").exists()

    changed = RunDirectory(tmp_path / "ck", fingerprint({"lr": 2e-3}, {"features": store}))
    assert changed.changes() == ["config: lr"]
    assert changed.prepare() == 1 and not (run.path / "last.pt").exists()

    (run.path / "last.pt").write_bytes(b"progress")
    store.write_bytes(b"y" * 11)  # a rebuilt store
    rebuilt = RunDirectory(tmp_path / "ck", fingerprint({"lr": 2e-3}, {"features": store}))
    assert rebuilt.changes() == ["inputs: features"]
    assert rebuilt.prepare() == 1 and not (run.path / "last.pt").exists()

    (run.path / "fingerprint.json").write_bytes(b"\xff\xfe not json")
    assert RunDirectory(tmp_path / "ck", stamp).changes() == ["no readable fingerprint.json"]


# ---------------------------------------------------------------- stops


def test_ctrl_c_saves_last_and_resumes_to_the_same_run(tmp_path):
    torch.set_num_threads(1)
    train_captioner(toy_config(), ToyCaptionData(), tmp_path / "straight")
    run_dir = tmp_path / "interrupted"
    stopped = _run(run_dir, stop_at_step=6, signum=signal.SIGINT)
    assert stopped.returncode == INTERRUPTED_EXIT_CODE, stopped.stderr
    assert "received SIGINT" in stopped.stderr
    state = load_checkpoint(run_dir / "last.pt")["state"]
    assert (state["global_step"], state["epoch"], state["step_in_epoch"]) == (6, 2, 2)
    assert _run(run_dir).returncode == 0
    a = json.loads((tmp_path / "straight" / "history.json").read_text())
    b = json.loads((run_dir / "history.json").read_text())
    assert _strip_wall(a) == _strip_wall(b)
    wa, wb = (load_checkpoint(d / "last.pt")["model"] for d in (tmp_path / "straight", run_dir))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_stop_during_validation_resumes_with_the_validation(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    straight = train_captioner(toy_config(epochs=2), ToyCaptionData(), tmp_path / "straight")

    data = ToyCaptionData()
    plain = data.eval_batches
    calls = {"n": 0}

    def eval_batches(split, batch_size):
        for i, batch in enumerate(plain(split, batch_size)):
            calls["n"] += 1
            if calls["n"] == 3 and i == 0:  # second validation (epoch 2), first batch
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch

    data.eval_batches = eval_batches  # type: ignore[method-assign]
    with pytest.raises(Preempted, match="while validating epoch 2") as stop:
        train_captioner(toy_config(epochs=2), data, tmp_path / "run")
    assert stop.value.exit_code == 75
    state = load_checkpoint(tmp_path / "run" / "last.pt")["state"]
    assert (state["epoch"], state["phase"], len(state["history"])) == (2, "validate", 1)
    resumed = train_captioner(toy_config(epochs=2), ToyCaptionData(), tmp_path / "run")
    assert _strip_wall(resumed.history) == _strip_wall(straight.history)


# ---------------------------------------------------------------- non-finite guard


class _PoisonedData(ToyCaptionData):
    """Features of some images are NaN, as a store with overwritten bytes gives them."""

    def __init__(self, poisoned_images: int) -> None:
        super().__init__()
        self.features[:poisoned_images] = float("nan")


def test_a_few_nonfinite_steps_are_skipped_and_counted(tmp_path, caplog):
    torch.set_num_threads(1)
    cfg = toy_config(epochs=1, max_nonfinite_steps=4, batch_size=16)  # 1 batch holds everything
    with caplog.at_level(logging.WARNING):
        result = train_captioner(cfg, _PoisonedData(1), tmp_path)
    assert result.history[0]["nonfinite_steps"] == 1
    assert "non-finite loss at epoch 1, step 1" in caplog.text and "step skipped (1 of" in caplog.text
    weights = load_checkpoint(tmp_path / "last.pt")["model"]
    assert all(torch.isfinite(w).all() for w in weights.values())  # nothing was applied


def test_too_many_nonfinite_steps_stop_training_naming_the_stores(tmp_path):
    torch.set_num_threads(1)
    with pytest.raises(NonFiniteTraining, match=r"features store grid\.h5") as err:
        train_captioner(toy_config(max_nonfinite_steps=2), _PoisonedData(8), tmp_path,
                        inputs="features store grid.h5, concepts store concepts.h5")
    assert "the 3th such step" in str(err.value) and "mia data verify" in str(err.value)


# ---------------------------------------------------------------- the loss


def test_label_smoothing_as_released_and_blind_to_padding():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    targets = torch.tensor([[4, 5, 2, PAD, PAD], [6, 2, PAD, PAD, PAD]])
    eps, k = 0.1, logits.shape[-1]
    # By hand, the released cal_loss: (1 - eps) on the target, eps / (K - 1) on every other
    # class, averaged over the 5 real tokens only.
    logp = F.log_softmax(logits, -1)
    total, n = 0.0, 0
    for b in range(2):
        for t in range(5):
            y = int(targets[b, t])
            if y == PAD:
                continue
            q = torch.full((k,), eps / (k - 1))
            q[y] = 1 - eps
            total += float(-(q * logp[b, t]).sum())
            n += 1
    assert n == 5
    assert float(caption_loss(logits, targets, eps)) == pytest.approx(total / n, rel=1e-6)
    # Whatever the model predicts at padded positions changes nothing.
    noisy = logits.clone()
    noisy[targets == PAD] = torch.randn(int((targets == PAD).sum()), k) * 100
    assert float(caption_loss(noisy, targets, eps)) == pytest.approx(total / n, rel=1e-6)
    # No smoothing: plain cross-entropy over real tokens.
    plain = F.cross_entropy(logits.reshape(-1, k), targets.reshape(-1), ignore_index=PAD)
    assert float(caption_loss(logits, targets, 0.0)) == pytest.approx(float(plain), rel=1e-6)


# ---------------------------------------------------------------- logs


def test_progress_lines_in_the_log(tmp_path, caplog):
    torch.set_num_threads(1)
    with caplog.at_level(logging.INFO, logger="mia.training.loop"):
        train_captioner(toy_config(epochs=1, log_every=2), ToyCaptionData(), tmp_path)
    lines = [r.getMessage() for r in caplog.records if "steps/s" in r.getMessage()]
    assert len(lines) == 2  # steps 2 and 4 of 4
    assert lines[0].startswith("epoch 1/1 step 2/4 (global 2) loss ")
    assert "lr 0.005" in lines[0] and "epoch left" in lines[0] and "rss " in lines[0]
    assert "run left" in lines[0] and "run elapsed" in lines[0]


def test_job_log_holds_warnings_tracebacks_and_c_level_stderr(tmp_path):
    log = tmp_path / "logs" / "job.log"
    script = textwrap.dedent(f"""
        import os, sys, warnings
        sys.path.insert(0, {str(REPO)!r})
        from mia.runlog import setup_job_logging
        logger = setup_job_logging({str(log)!r}, "workflow.demo")
        logger.info("starting")
        warnings.warn("a library warning")
        os.write(2, b"written by C code to fd 2\\n")
        raise ValueError("features.h5: dataset 'features' missing")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    text = log.read_text()
    for expected in ("INFO workflow.demo: starting", "UserWarning: a library warning",
                     "written by C code to fd 2", "Traceback (most recent call last)",
                     "ValueError: features.h5: dataset 'features' missing"):
        assert expected in text, expected
        assert expected in done.stderr, expected  # the console still sees everything


def test_a_finished_run_is_published_again_and_says_so(tmp_path, caplog):
    """Rerunning a job whose run folder finished (outputs deleted, --forcerun) costs no training:
    the log says the results are the earlier ones and how to train anew."""
    torch.set_num_threads(1)
    first = train_captioner(toy_config(epochs=1), ToyCaptionData(), tmp_path)
    with caplog.at_level(logging.INFO, logger="mia.training.loop"):
        again = train_captioner(toy_config(epochs=1), ToyCaptionData(), tmp_path)
    assert again.history == first.history and again.best_score == first.best_score
    assert "already trained for its 1 epochs" in caplog.text and "to train it anew" in caplog.text
    assert "steps/s" not in caplog.text and "resuming at" not in caplog.text

"""A run is published whole or not at all, never stuck, never thrown away for a log setting.

* Kill points at the end of a run's life (after the last ``best.pt``, between the last
  ``last.pt`` and ``history.json``, before and during publishing, during a checkpoint write): the
  retry publishes exactly what an uninterrupted run publishes, and deletes the temporaries a
  SIGKILL left.
* ``best.pt`` is checked against the SHA-256 recorded when it was written: repaired where its
  weights still exist, a clear error with the fix where they do not; the copy to ``model.pt`` is
  verified before it appears.
* The fingerprint leaves out keys that cannot change the result (and says so); every other key,
  also one added later, restarts a changed run. Inputs up to 1 GiB are stamped by content.
* Clear messages instead of tracebacks: a file where the checkpoint folder belongs, a folder as
  ``fingerprint.json``, an unwritable folder, a full disk, a checkpoint of another run, a text file
  given as a checkpoint.

The toy captioner of test_captioning_train.py trains in about a second; :class:`ScriptedTask`
(a linear model with scripted validation scores) pins the selection. Run as a script
(``python tests/test_run_publishing.py OUT EPOCHS KILL_POINT``), this file runs the toy job in a
fresh process that SIGKILLs itself at the named point.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_captioning_train import ToyCaptionData, toy_config
from test_scst_train import load_data as scst_load_data
from test_scst_train import scst_config, signal_at_step, train_xe, write_world
from test_vqa_train import tiny as vqa_tiny
from torch import nn
from vqa_fixtures import build_vqa_world

import mia.io
import mia.training.job as job
import mia.training.lifecycle as lifecycle
import mia.training.loop as loop
from mia.captioning.scst_train import train_scst
from mia.captioning.train import train_captioner
from mia.data.loaders import VQAData
from mia.training import (
    IGNORED_KEYS,
    CheckpointError,
    FitResult,
    LoopSettings,
    Preempted,
    RunDirectory,
    RunDirectoryError,
    TrainingTask,
    file_sha256,
    fingerprint,
    fit,
    load_checkpoint,
    publish_run,
    run_training_job,
)
from mia.vqa.train import train_vqa

LOG = logging.getLogger("test.job")


pytestmark = pytest.mark.usefixtures("one_thread")  # the same float sums in the same order


# ---------------------------------------------------------------- the toy job, as a rule runs it


def toy_job(out: Path, epochs: int, **train) -> FitResult:
    """The toy captioner's job: run folder, training, publishing (as workflow_scripts do)."""
    cfg = toy_config(epochs=epochs, **{"lr": 1e-2, **train})  # lr: epoch 2 is the best
    run_dir = RunDirectory(out / "checkpoints", fingerprint(dataclasses.asdict(cfg), {}))
    return run_training_job(
        run_dir, lambda: train_captioner(cfg, ToyCaptionData(), run_dir.path), LOG, "toy",
        publish=(str(out / "history.json"), str(out / "model.pt")))


def strip_wall(history: list[dict]) -> list[dict]:
    """History rows without their timings (wall times, SCST's reward milliseconds)."""
    return [{k: v for k, v in row.items() if not k.endswith(("wall_s", "_ms"))}
            for row in history]


def published(out: Path) -> tuple[list[dict], dict]:
    """What a run published: its history (without wall times) and model.pt."""
    history = json.loads((out / "history.json").read_text())
    return strip_wall(history), load_checkpoint(out / "model.pt")


def assert_same_publication(out: Path, reference: Path) -> None:
    got_history, got_model = published(out)
    want_history, want_model = published(reference)
    assert got_history == want_history
    assert got_model["epoch"] == want_model["epoch"]
    assert got_model["model"].keys() == want_model["model"].keys()
    assert all(torch.equal(got_model["model"][k], want_model["model"][k])
               for k in want_model["model"])
    assert not list(out.rglob("*.tmp-*")), list(out.rglob("*.tmp-*"))
    # The run folder's own history.json is whole too (it is what a user opens while it trains).
    assert strip_wall(json.loads((out / "checkpoints" / "history.json").read_text())) == \
        want_history


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """The toy job run straight through, for 1 and 2 epochs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    runs = {}
    for epochs in (1, 2):
        out = tmp_path_factory.mktemp(f"straight{epochs}")
        toy_job(out, epochs)
        runs[epochs] = out
    torch.set_num_threads(before)
    return runs


class Killed(BaseException):
    """Stands for SIGKILL in-process: nothing after the raise runs (atomic writes in flight
    clean their temporary, which a real SIGKILL leaves: see the subprocess tests)."""


def kill_at(monkeypatch: pytest.MonkeyPatch, point: str, epochs: int) -> None:
    """Make the toy job die at ``point`` of its last epoch."""
    if point == "after_last_best":  # best.pt of the last epoch written, last.pt not yet
        real_save = loop.save_checkpoint

        def save(obj, path):
            digest = real_save(obj, path)
            if Path(path).name == "best.pt" and obj.get("epoch") == epochs:
                raise Killed
            return digest

        monkeypatch.setattr(loop, "save_checkpoint", save)
    elif point == "before_history":  # last.pt of the finished run written, history.json not
        real_write = loop.write_json

        def write(path, obj, *args, **kwargs):
            if Path(path).name == "history.json" and len(obj) == epochs:
                raise Killed
            return real_write(path, obj, *args, **kwargs)

        monkeypatch.setattr(loop, "write_json", write)
    elif point == "before_publishing":
        def publish(*args, **kwargs):
            raise Killed

        monkeypatch.setattr(job, "publish_run", publish)
    elif point == "after_history_output":  # history.json published, model.pt not
        real_write = job.write_json

        def write_then_die(path, obj, *args, **kwargs):
            real_write(path, obj, *args, **kwargs)
            raise Killed

        monkeypatch.setattr(job, "write_json", write_then_die)
    elif point == "during_the_copy":
        def half_copy(src, dst):
            data = Path(src).read_bytes()
            Path(dst).write_bytes(data[:len(data) // 2])
            raise Killed

        monkeypatch.setattr(job.shutil, "copyfile", half_copy)
    else:
        raise ValueError(point)


@pytest.mark.parametrize(("point", "epochs"), [
    ("after_last_best", 2), ("before_history", 2), ("before_history", 1),
    ("before_publishing", 2), ("after_history_output", 1), ("during_the_copy", 1),
])
def test_killed_at_the_end_of_a_run_the_retry_publishes_the_uninterrupted_run(
        point: str, epochs: int, uninterrupted: dict[int, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Before: a kill between the last last.pt and history.json published 1 of 2 epochs (exit
    0), and with one epoch every retry failed with FileNotFoundError history.json."""
    with monkeypatch.context() as m:
        kill_at(m, point, epochs)
        with pytest.raises(Killed):
            toy_job(tmp_path, epochs)
    with caplog.at_level(logging.INFO):
        toy_job(tmp_path, epochs)  # the retry
    assert "starting over" not in caplog.text
    assert_same_publication(tmp_path, uninterrupted[epochs])


def _trainer_job(trainer: str, out: Path, scst_world: dict[str, Path], vqa_world) -> FitResult:
    """One epoch of SCST (the test config's) or of VQA training, as the rule's job runs it."""
    if trainer == "scst":
        cfg = scst_config(epochs=1)
        train = lambda: train_scst(cfg, scst_load_data(scst_world),  # noqa: E731
                                   scst_world["xe_updown"], out / "checkpoints",
                                   scst_world["df"])
    else:
        cfg = vqa_tiny(epochs=1)
        data = VQAData.from_stores(vqa_world.vqa, vqa_world.regions,
                                   concepts_h5=vqa_world.concepts)
        train = lambda: train_vqa(cfg, data, out / "checkpoints",  # noqa: E731
                                  val_questions=vqa_world.questions["val"],
                                  val_annotations=vqa_world.annotations["val"])
    run_dir = RunDirectory(out / "checkpoints", fingerprint(dataclasses.asdict(cfg), {}))
    return run_training_job(run_dir, train, LOG, trainer,
                            publish=(str(out / "history.json"), str(out / "model.pt")))


@pytest.fixture(scope="module")
def vqa_world(tmp_path_factory: pytest.TempPathFactory):
    return build_vqa_world(tmp_path_factory.mktemp("vqa_world"))


@pytest.mark.parametrize("trainer", ["scst", "vqa"])
def test_one_epoch_scst_and_vqa_killed_before_the_history_publish_on_retry(
        trainer: str, scst_world: dict[str, Path], vqa_world, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With the test config's one SCST epoch every retry failed (FileNotFoundError
    history.json): the run was stuck until someone deleted its folder. Same in VQA training."""
    _trainer_job(trainer, tmp_path / "straight", scst_world, vqa_world)
    with monkeypatch.context() as m:
        kill_at(m, "before_history", 1)
        with pytest.raises(Killed):
            _trainer_job(trainer, tmp_path / "killed", scst_world, vqa_world)
    _trainer_job(trainer, tmp_path / "killed", scst_world, vqa_world)
    assert_same_publication(tmp_path / "killed", tmp_path / "straight")


def _sigkill_main(out: str, epochs: int, point: str) -> int:
    """Run the toy job and SIGKILL this process at ``point`` (a real kill: the temporary of the
    write in flight stays on disk)."""
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(1)

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "during_the_copy":
        def half_copy(src, dst):
            data = Path(src).read_bytes()
            Path(dst).write_bytes(data[:len(data) // 2])
            die()

        job.shutil.copyfile = half_copy  # type: ignore[assignment]
    elif point == "during_the_last_best":
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            if obj.get("epoch") == epochs and "optimizer" not in obj:  # best.pt, not last.pt
                f.write(b"PK\x03\x04 half a checkpoint")
                f.flush()
                die()
            return real_save(obj, f, *args, **kwargs)

        torch.save = save  # type: ignore[assignment]
    toy_job(Path(out), epochs)
    return 0


@pytest.mark.parametrize(("point", "leftover"), [
    ("during_the_copy", "model.pt.tmp-*"), ("during_the_last_best", "checkpoints/best.pt.tmp-*")])
def test_sigkill_leaves_a_temporary_that_the_retry_deletes(
        point: str, leftover: str, uninterrupted: dict[int, Path], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """A SIGKILL during a write leaves `<name>.tmp-<pid>` (hundreds of MB at paper size); the
    retry deletes it, and only it, and publishes the uninterrupted run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, __file__, str(tmp_path), "2", point], env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    left = list(tmp_path.glob(leftover))
    assert len(left) == 1, sorted(p.name for p in tmp_path.rglob("*"))
    (tmp_path / "notes.txt.tmp-1").write_text("not ours")  # another tool's file: left alone
    with caplog.at_level(logging.INFO):
        toy_job(tmp_path, 2)
    assert "deleted the temporary file of an interrupted write" in caplog.text
    assert not left[0].exists() and (tmp_path / "notes.txt.tmp-1").exists()
    (tmp_path / "notes.txt.tmp-1").unlink()
    assert_same_publication(tmp_path, uninterrupted[2])


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporaries_only_of_dead_processes_or_earlier_attempts(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = RunDirectory(tmp_path / "ck", fingerprint({"lr": 1.0}, {}))
    run.prepare()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead, alive = _dead_pid(), sleeper.pid
        names = {"dead": f"last.pt.tmp-{dead}", "own_pid": f"best.pt.tmp-{os.getpid()}",
                 "alive": f"last.pt.tmp-{alive}", "not_a_temporary": "last.pt.tmp-x"}
        for name in names.values():
            (run.path / name).write_bytes(b"x" * 10)
        with caplog.at_level(logging.INFO):
            assert RunDirectory(run.path, run.stamp).prepare() == 2
        left = {p.name for p in run.path.iterdir()}
        assert names["dead"] not in left and names["own_pid"] not in left
        assert names["alive"] in left and names["not_a_temporary"] in left
        assert f"process {alive}, which may be writing it, is alive" in caplog.text
        # A pid that an earlier attempt of this run had (on another node, say) is stale even when
        # some process here has it now.
        records = json.loads((run.path / "attempts.json").read_text())
        records[0]["pid"] = alive
        (run.path / "attempts.json").write_text(json.dumps(records))
        assert RunDirectory(run.path, run.stamp).prepare() == 3
        assert names["alive"] not in {p.name for p in run.path.iterdir()}
    finally:
        sleeper.kill()
        sleeper.wait()


# ---------------------------------------------------------------- best.pt checked by its digest


class ScriptedTask(TrainingTask):
    """A linear model on 3 fixed batches whose validation scores are scripted; optional starting
    point (epoch 0) and scripted step losses (NaN = a non-finite step)."""

    def __init__(self, scores: list[float], start: float | None = None,
                 losses: list[float] | None = None, meta: dict | None = None) -> None:
        torch.manual_seed(0)
        self.model = nn.Linear(3, 1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.scores, self.start, self.losses = list(scores), start, losses
        self._meta = {"task": "scripted", **(meta or {})}
        g = torch.Generator().manual_seed(1)
        self.x, self.y = torch.randn(3, 4, 3, generator=g), torch.randn(3, 4, 1, generator=g)

    def meta(self) -> dict:
        return dict(self._meta)

    def batches(self, epoch: int, start: int):
        return [(i, self.x[i], self.y[i]) for i in range(start, len(self.x))]

    def num_batches(self, epoch: int) -> int:
        return len(self.x)

    def loss(self, batch, epoch: int):
        i, x, y = batch
        loss = F.mse_loss(self.model(x), y)
        if self.losses is not None:
            loss = loss * 0 + self.losses[(epoch - 1) * len(self.x) + i]
        return loss, {}

    def validate(self, epoch: int, should_stop) -> dict[str, float]:
        return {"val_score": self.scores[epoch - 1]}

    def starting_point(self, should_stop):
        return None if self.start is None else {"val_score": self.start}


def scripted_fit(out: Path, scores: list[float], start: float | None = None, **kwargs
                 ) -> FitResult:
    settings = LoopSettings(epochs=len(scores), checkpoint_every=0, log_every=0, progress=False)
    return fit(ScriptedTask(scores, start, **kwargs), settings, out)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def _swap(path: Path) -> None:
    torch.save({"model": {}, "epoch": 1}, path)  # a valid checkpoint, but not the one written


@pytest.mark.parametrize("damage", [_truncate, Path.unlink, _swap],
                         ids=["truncated", "missing", "replaced"])
def test_damaged_best_pt_is_rewritten_from_last_pt_when_it_holds_those_weights(
        tmp_path: Path, damage, caplog: pytest.LogCaptureFixture) -> None:
    """Before: a truncated best.pt was published as model.pt (exit 0, a 1,000-byte model), a
    missing one a traceback on every retry."""
    first = scripted_fit(tmp_path, [1.0, 2.0])  # epoch 2 selected: last.pt holds its weights
    original = (tmp_path / "best.pt").read_bytes()
    damage(tmp_path / "best.pt")
    with caplog.at_level(logging.WARNING):
        again = scripted_fit(tmp_path, [1.0, 2.0])
    assert "rewriting it from the weights of last.pt" in caplog.text
    assert (tmp_path / "best.pt").read_bytes() == original
    assert again.best_sha256 == first.best_sha256 == file_sha256(tmp_path / "best.pt")


def test_damaged_best_pt_of_the_starting_weights_is_rewritten_from_them(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """SCST's epoch 0 (the XE weights won): they are the task's weights before last.pt loads."""
    scripted_fit(tmp_path, [1.0, 0.5], start=3.0)
    original = (tmp_path / "best.pt").read_bytes()
    _truncate(tmp_path / "best.pt")
    with caplog.at_level(logging.WARNING):
        result = scripted_fit(tmp_path, [1.0, 0.5], start=3.0)
    assert result.best_epoch == 0 and "rewriting it from the starting weights" in caplog.text
    assert (tmp_path / "best.pt").read_bytes() == original


def test_lost_best_pt_of_an_earlier_epoch_stops_with_the_fix(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ck = tmp_path / "ck"
    scripted_fit(ck, [2.0, 1.0])  # epoch 1 selected; last.pt holds epoch 2
    _truncate(ck / "best.pt")
    with pytest.raises(CheckpointError, match=r"selected at epoch 1 \(val_score 2\.0000\) cannot "
                       r"be published: its bytes are not those written .*\(last\.pt holds epoch 2"
                       rf"\)\. Delete the folder {ck}"):
        scripted_fit(ck, [2.0, 1.0])
    # Through the job: one error line, exit 1, nothing published.
    stamp = fingerprint({"lr": 1}, {})
    outputs = (str(tmp_path / "history.json"), str(tmp_path / "model.pt"))
    job_dir = RunDirectory(tmp_path / "job", stamp)
    run_training_job(job_dir, lambda: scripted_fit(job_dir.path, [2.0, 1.0]), LOG, "scripted",
                     publish=outputs)
    for out in outputs:
        Path(out).unlink()  # e.g. --forcerun
    _truncate(job_dir.path / "best.pt")
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as stop:
        run_training_job(job_dir, lambda: scripted_fit(job_dir.path, [2.0, 1.0]), LOG,
                         "scripted", publish=outputs)
    assert stop.value.code == 1 and "Delete the folder" in caplog.text
    assert not any(Path(out).exists() for out in outputs)


def test_no_finite_validation_score_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no epoch has a finite val_score \(\[nan, nan\]\)"):
        scripted_fit(tmp_path, [float("nan"), float("nan")])


def test_the_copy_to_model_pt_is_verified_before_it_appears(tmp_path: Path) -> None:
    result = scripted_fit(tmp_path / "ck", [1.0])
    _swap(result.best_path)  # changed after training, e.g. by another job or a failing disk
    with pytest.raises(CheckpointError, match=r"does not match the SHA-256 recorded"):
        publish_run(result, tmp_path / "history.json", tmp_path / "model.pt")
    assert not (tmp_path / "model.pt").exists()
    assert not list(tmp_path.glob("*.tmp-*"))


# ---------------------------------------------------------------- the fingerprint


def test_cosmetic_keys_are_left_out_at_any_depth_and_every_other_key_counts(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = {"lr": 1e-3, "log_every": 100, "captioner": {"d_model": 8, "cnn": {"workers": 4}}}
    stamp = fingerprint(config, {})
    assert stamp["config"] == {"lr": 1e-3, "captioner": {"d_model": 8, "cnn": {}}}
    assert stamp["ignored"] == {"log_every": 100, "captioner.cnn.workers": 4}
    run = RunDirectory(tmp_path / "ck", stamp)
    with caplog.at_level(logging.INFO):
        run.prepare()
    assert "leaves out captioner.cnn.workers, log_every" in caplog.text
    (run.path / "last.pt").write_bytes(b"progress")

    cosmetic = {**config, "log_every": 1, "progress": True, "device": "cuda",
                "checkpoint_every": 7, "val_batch_size": 3, "max_nonfinite_steps": 50,
                "captioner": {"d_model": 8, "cnn": {"workers": 0}}}
    assert RunDirectory(run.path, fingerprint(cosmetic, {})).changes() == []
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert RunDirectory(run.path, fingerprint(cosmetic, {})).prepare() == 2
    assert "only keys that cannot change the result changed" in caplog.text
    assert "log_every 100 -> 1" in caplog.text and (run.path / "last.pt").exists()

    # Every key not listed counts, also one added after this test was written.
    for changed, key in (({**cosmetic, "precision": "bf16"}, "precision"),
                         ({**cosmetic, "captioner": {"d_model": 16, "cnn": {}}},
                          "captioner.d_model")):
        assert RunDirectory(run.path, fingerprint(changed, {})).changes() == [f"config: {key}"]
    # A fingerprint written before IGNORED_KEYS existed (cosmetic keys in its config) still
    # matches, so upgrading does not restart runs for them.
    old = {"config": {**config, "log_every": 5}, "inputs": {}}
    (run.path / "fingerprint.json").write_text(json.dumps(old))
    assert RunDirectory(run.path, fingerprint(config, {})).changes() == []
    assert set(IGNORED_KEYS) >= {"log_every", "progress", "checkpoint_every", "val_batch_size",
                                 "device"}


def test_a_cosmetic_change_in_a_checkpoint_meta_resumes_another_config_names_the_folder(
        tmp_path: Path) -> None:
    """SCST's last.pt carries its whole config as meta: log_every in it must not block the
    resume; a real difference names the folder to delete (it said only 'the run directory')."""
    scripted_fit(tmp_path, [1.0, 2.0], meta={"scst": {"lr": 1e-5, "log_every": 100}})
    again = scripted_fit(tmp_path, [1.0, 2.0], meta={"scst": {"lr": 1e-5, "log_every": 1}})
    assert again.best_epoch == 2
    with pytest.raises(CheckpointError, match=rf"another config or vocabulary .* delete the "
                       rf"folder {tmp_path} to start this run over"):
        scripted_fit(tmp_path, [1.0, 2.0], meta={"scst": {"lr": 1e-4, "log_every": 1}})


def test_an_input_swapped_for_one_of_the_same_size_and_time_is_noticed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Before: the stamp was size + mtime (whole seconds), so another XE model of the same size
    and time resumed stale checkpoints. Small files are now stamped by content."""
    model = tmp_path / "xe_model.pt"
    model.write_bytes(b"a" * 100)
    stamp = fingerprint({}, {"xe_model": model})
    assert stamp["inputs"]["xe_model"]["sha256"] == file_sha256(model)
    RunDirectory(tmp_path / "ck", stamp).prepare()
    times = (model.stat().st_atime_ns, model.stat().st_mtime_ns)
    model.write_bytes(b"b" * 100)
    os.utime(model, ns=times)
    assert RunDirectory(tmp_path / "ck", fingerprint({}, {"xe_model": model})).changes() == [
        "inputs: xe_model"]
    # Files above the limit (the feature stores) are stamped by size and mtime, and the log says.
    big = fingerprint({}, {"features": model}, digest_max_bytes=10)
    assert set(big["inputs"]["features"]) == {"path", "size", "mtime_ns"}
    with caplog.at_level(logging.INFO):
        RunDirectory(tmp_path / "ck2", big).prepare()
    assert "inputs stamped by size and modification time, not read" in caplog.text
    assert "features (0.0 GB)" in caplog.text


@pytest.fixture(scope="module")
def scst_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """test_scst_train.py's world and its Up-Down XE model."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    paths = write_world(tmp_path_factory.mktemp("scst_world"))
    paths["xe_updown"] = train_xe(paths, "updown")
    torch.set_num_threads(before)
    return paths


@pytest.mark.parametrize("recorded", [True, False], ids=["device_recorded", "older_last_pt"])
def test_scst_resumed_on_another_device_reseeds_its_sampler(
        scst_world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, recorded: bool) -> None:
    """`device` may change between attempts (it is left out of the fingerprint), but the state
    of a CUDA generator (16 bytes) does not fit a CPU one (5,056): last.pt as a GPU attempt
    writes it, resumed on the CPU, re-seeds the sampler and trains on instead of crashing."""
    data = scst_load_data(scst_world)
    with monkeypatch.context() as m:
        signal_at_step(m, 2)
        with pytest.raises(Preempted):
            train_scst(scst_config(epochs=1), data, scst_world["xe_updown"], tmp_path,
                       scst_world["df"])
    ck = load_checkpoint(tmp_path / "last.pt")
    ck["extra"]["generator"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's state
    if recorded:
        ck["extra"]["generator_device"] = "cuda"
    else:
        ck["extra"].pop("generator_device")
    torch.save(ck, tmp_path / "last.pt")
    with caplog.at_level(logging.WARNING):
        result = train_scst(scst_config(epochs=1), scst_load_data(scst_world),
                            scst_world["xe_updown"], tmp_path, scst_world["df"])
    assert "does not fit this attempt's cpu generator; re-seeded it" in caplog.text
    assert [row["epoch"] for row in result.history] == [1]
    assert math.isfinite(result.history[0]["val_cider"])


# ---------------------------------------------------------------- clear messages, no tracebacks


def test_fingerprint_json_that_is_a_folder_starts_over(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    run = RunDirectory(tmp_path / "ck", fingerprint({"lr": 1.0}, {}))
    run.prepare()
    (run.path / "fingerprint.json").unlink()
    (run.path / "fingerprint.json").mkdir()  # was: IsADirectoryError traceback on every retry
    with caplog.at_level(logging.WARNING):
        assert RunDirectory(run.path, run.stamp).prepare() == 1
    assert "no readable fingerprint.json (it is a folder)); starting over" in caplog.text
    assert (run.path / "fingerprint.json").is_file()


def test_checkpoint_folder_that_is_a_file_fails_with_the_fix(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "checkpoints").write_text("a file where the run's folder belongs")
    run = RunDirectory(tmp_path / "checkpoints", fingerprint({}, {}))
    with pytest.raises(RunDirectoryError, match=r"checkpoints: this run's checkpoint folder is a "
                       r"file; move it away or delete it"):
        run.prepare()
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as stop:
        run_training_job(run, lambda: None, LOG, "toy")
    assert stop.value.code == 1 and "is a file; move it away" in caplog.text


@pytest.mark.parametrize(("code", "expected"), [
    (errno.EACCES, r"cannot write the run's checkpoint folder \(Permission denied\); make the "
                   r"results folder writable"),
    (errno.EROFS, r"cannot write it \(Read-only file system\); make its folder writable"),
])
def test_unwritable_results_folder_fails_with_the_fix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        code: int, expected: str) -> None:
    """The tests run as root, for whom chmod does not stop writes: the error is the one the
    kernel gives a read-only mount (EROFS) or a folder of another user (EACCES)."""
    def refuse(path, *args, **kwargs):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(lifecycle, "write_json", refuse)
    run = RunDirectory(tmp_path / "ck", fingerprint({}, {}))
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as stop:
        run_training_job(run, lambda: None, LOG, "toy")
    assert stop.value.code == 1
    assert "fingerprint.json" in caplog.text
    assert len(caplog.records) == 1 and caplog.records[0].getMessage().count("\n") == 0
    assert re.search(expected, caplog.text), caplog.text


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux) to fill a "
                    "disk without filling one")
def test_disk_full_during_a_save_keeps_the_last_checkpoint_and_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        uninterrupted: dict[int, Path]) -> None:
    """The 3rd write of last.pt goes to /dev/full (the kernel's ENOSPC): before, a traceback
    ending in torch's 'unexpected pos' RuntimeError."""
    real = mia.io.temporary_path
    calls = {"last.pt": 0}

    def temporary(path):
        tmp = real(path)
        if Path(path).name == "last.pt":
            calls["last.pt"] += 1
            if calls["last.pt"] == 3:
                os.symlink("/dev/full", tmp)
        return tmp

    monkeypatch.setattr(mia.io, "temporary_path", temporary)
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as stop:
        toy_job(tmp_path, 2)
    assert stop.value.code == 1
    assert (f"{tmp_path / 'checkpoints' / 'last.pt'}: the disk is full (No space left on "
            "device). The checkpoints written before are intact") in caplog.text
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["state"]
    assert state["global_step"] == 3  # the second save: step 3 of epoch 1
    assert not list(tmp_path.rglob("*.tmp-*"))
    monkeypatch.undo()
    toy_job(tmp_path, 2)  # space freed: the retry resumes and publishes the same run
    assert_same_publication(tmp_path, uninterrupted[2])


@pytest.mark.parametrize(("content", "expected"), [
    (b"model weights: see the README\n", r"the file is text \('model weights: see the R'\.\.\.\)"
                                         r", not a PyTorch checkpoint"),
    (b"", r"the file is empty"),
    (b"PK\x03\x04" + b"\0" * 500, r"the file is truncated or damaged"),
])
def test_a_file_that_is_no_checkpoint_is_named_for_what_it_is(
        tmp_path: Path, content: bytes, expected: str) -> None:
    """A text file given as the XE model was explained as a file that 'could run code when
    unpickled'."""
    path = tmp_path / "xe_model.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError,
                       match=rf"xe_model\.pt: cannot be loaded: {expected}") as err:
        load_checkpoint(path)
    assert "run code" not in str(err.value) and "delete it and rerun" in str(err.value)


def test_publishing_needs_the_result_of_fit(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "ck", fingerprint({}, {}))
    with pytest.raises(TypeError, match="needs train\\(\\) to return a FitResult"):
        run_training_job(run, lambda: 3, LOG, "toy", publish=("h.json", "m.pt"))


if __name__ == "__main__":
    sys.exit(_sigkill_main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))

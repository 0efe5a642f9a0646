"""One training loop for every trainer: epochs of steps, validation, selection, exact resume.

Cross-entropy captioning, SCST and VQA differ in what a step computes and how a model is scored;
everything else is the same and lives here: the step bookkeeping, the learning-rate call, the
non-finite guard, gradient clipping, ``last.pt`` every ``checkpoint_every`` steps and at every
epoch boundary, stopping on a signal, validation after each epoch, ``best.pt`` on the best
validation score (never the test split), ``history.json``, and resuming a stopped run exactly.

A trainer is a :class:`TrainingTask`: it owns the model and optimiser and says how to iterate
batches, compute a step's loss, set the learning rate and validate.

Outputs in ``out_dir``:

* ``last.pt``: model, optimiser, loop state, RNG states, task extras and the task's ``meta``
  (config, vocabulary) that a resume must match;
* ``best.pt``: :meth:`TrainingTask.best_checkpoint` of the best epoch so far; its SHA-256 is
  recorded in ``last.pt`` when it is written, and :func:`fit` returns only after ``best.pt``
  matches it (repairing it where its weights still exist: those of the epoch in ``last.pt``, or
  the starting weights of epoch 0), so a truncated, missing or swapped ``best.pt`` is never
  published;
* ``history.json``: one row per epoch (train loss, non-finite steps skipped, learning rate, wall
  times, and every validation metric), rewritten from ``last.pt`` before :func:`fit` returns, so
  a job killed between the last save and the history still publishes every epoch.

Exact resume: the data order is a function of (seed, epoch) and batches already done are skipped,
the RNG states are restored, and learning rates are pure functions of (epoch, step) or live in the
task's extras, so a run stopped at any step and restarted ends with exactly the weights of an
uninterrupted one on CPU. A stop during validation (SIGTERM while decoding 5,000 images) saves
``last.pt`` with the epoch trained but not validated, and the restart validates it.

All of it is saved in the weights-only checkpoint format of :mod:`mia.training.checkpoint`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mia.io import write_json
from mia.training.checkpoint import (
    CheckpointError,
    file_sha256,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from mia.training.lifecycle import Preempted, StopSignals, split_ignored
from mia.training.precision import Precision, resolve_precision
from mia.training.progress import ProgressLog, format_duration
from mia.training.step import (
    MAX_PENDING_STEPS,
    FlushedStep,
    PendingStep,
    StepRecord,
    batch_ids,
    finite_flag,
    gradient_norm,
    step_if,
)

log = logging.getLogger(__name__)


class NonFiniteTraining(RuntimeError):
    """The loss or a gradient was not finite more often than the run allows: the inputs are
    corrupt or the recipe diverges. The message names the inputs to check."""


class ValidationInterrupted(Exception):
    """Raised by a task's validation when the loop asks it to stop (see ``should_stop``)."""


@dataclass(frozen=True)
class LoopSettings:
    """What the loop needs from a trainer's config."""

    epochs: int
    checkpoint_every: int = 1000  # steps between last.pt snapshots (0: epoch ends only)
    log_every: int = 100  # steps between progress lines in the log (0: none)
    progress: bool | str = "auto"  # progress bar: True, False, "auto" (when a terminal watches)
    grad_clip_norm: float = 0.0  # max global gradient norm (0: no clipping)
    grad_clip_value: float = 0.0  # clamp each gradient element to +-value (0: no clamping)
    max_nonfinite_steps: int = 5  # steps with a non-finite loss/gradient skipped before failing
    score_key: str = "val_score"  # the validation metric that selects best.pt (higher = better)
    score_scale: float = 1.0  # x this in log lines: the paper's scale (100 for CIDEr-D's 0..1)
    score_name: str = ""  # how log lines name the score ("" = score_key)
    precision: str = "auto"  # auto | fp32 | bf16 (mia.training.precision)


@dataclass
class LoopState:
    """Where training stands; saved in ``last.pt``."""

    epoch: int = 1  # 1-based epoch being trained or validated
    step_in_epoch: int = 0  # batches of this epoch already done
    global_step: int = 0
    phase: str = "train"  # "train", then "validate" once the epoch's batches are done
    best_score: float = -math.inf
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch_loss_sum: float = 0.0
    epoch_loss_steps: int = 0
    epoch_nonfinite: int = 0
    nonfinite_steps: int = 0  # over the whole run
    epoch_wall_s: float = 0.0
    last_lr: float = 0.0
    best_sha256: str = ""  # of best.pt as written ("" before the first, or a last.pt of old)
    best_metrics: dict[str, float] = field(default_factory=dict)  # the metrics of best_epoch


@dataclass
class FitResult:
    best_score: float
    best_epoch: int
    history: list[dict[str, Any]]
    best_path: Path
    last_path: Path
    best_sha256: str = ""  # what best.pt's bytes hash to (checked before it is published)


class TrainingTask:
    """What a trainer provides. Subclasses set :attr:`model` and :attr:`optimizer`."""

    model: nn.Module
    optimizer: torch.optim.Optimizer

    def meta(self) -> dict[str, Any]:
        """What a resumable ``last.pt`` must match (config, vocabulary); plain data only."""
        return {}

    def batches(self, epoch: int, start: int) -> Iterable[Any]:
        """The training batches of ``epoch``, skipping the first ``start``."""
        raise NotImplementedError

    def num_batches(self, epoch: int) -> int | None:
        return None

    def start_epoch(self, epoch: int) -> None:
        """Called before the first step of every epoch (also a resumed one)."""

    def set_learning_rate(self, epoch: int, global_step: int) -> float:
        """Set the optimiser's rates for this step; return the main rate (for the log)."""
        return float(self.optimizer.param_groups[0]["lr"])

    def loss(self, batch: Any, epoch: int) -> tuple[Tensor, dict[str, float]]:
        """Forward one batch in train mode: the scalar loss and extra numbers for the log."""
        raise NotImplementedError

    def validate(self, epoch: int, should_stop: Callable[[], bool]) -> dict[str, float]:
        """Validation metrics (must include the settings' ``score_key``). Call ``should_stop()``
        between batches and raise :class:`ValidationInterrupted` when it is true."""
        raise NotImplementedError

    def starting_point(self, should_stop: Callable[[], bool]) -> Mapping[str, float] | None:
        """Validation metrics of the weights training starts from, when those weights are
        themselves a candidate for ``best.pt`` (epoch 0), or None (the default: only trained
        epochs compete). SCST starts from the selected XE model and, as self-critical.pytorch
        keeps the XE run's best score, an RL epoch must beat it to replace it. Called in eval
        mode on a fresh start only; raise :class:`ValidationInterrupted` when told to stop."""
        return None

    def best_checkpoint(self, epoch: int, metrics: Mapping[str, float]) -> dict[str, Any]:
        """The payload of ``best.pt`` (weights-only format)."""
        return {"model": self.model.state_dict(), "epoch": epoch, **self.meta(),
                "metrics": dict(metrics)}

    def extra_state(self) -> dict[str, Any]:
        """Task state beyond model and optimiser (an LR-on-plateau scheduler, ...)."""
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        pass

    def describe_inputs(self) -> str:
        """The inputs to name when training goes non-finite (store paths)."""
        return "the input stores"

    def batch_description(self, batch: Any) -> str:
        """Which items a batch holds, for a non-finite step's warning."""
        if isinstance(batch, Mapping) and "image_ids" in batch:
            ids = batch["image_ids"]
            ids = ids.tolist() if torch.is_tensor(ids) else list(ids)
            return f"image ids {ids[:8]}{' ...' if len(ids) > 8 else ''}"
        return "this batch"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def fit(task: TrainingTask, settings: LoopSettings, out_dir: str | os.PathLike) -> FitResult:
    """Train ``task`` for ``settings.epochs`` epochs, resuming from ``out_dir/last.pt``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    state = LoopState()
    meta = task.meta()
    fresh = not last_path.exists()
    if not fresh:
        # RNG states must stay CPU tensors; load_state_dict moves the rest to the device.
        ck = load_checkpoint(last_path, map_location="cpu")
        stored_meta = split_ignored(ck.get("meta") or {})[0]  # log_every & co. may change
        if stored_meta != split_ignored(meta)[0]:
            raise CheckpointError(
                f"{last_path}: was trained with another config or vocabulary than this run's; "
                f"delete the folder {out_dir} to start this run over")
        state = LoopState(**ck["state"])
        if state.best_epoch == 0 and state.best_sha256:
            # The starting weights (epoch 0 of the selection) are in the model only now.
            _repair_best(task, state, best_path, "the starting weights")
        task.model.load_state_dict(ck["model"])
        task.optimizer.load_state_dict(ck["optimizer"])
        task.load_extra_state(ck.get("extra", {}))
        set_rng_state(ck["rng"])
        if _model_holds_best(state):  # the last chance: the next step changes the weights
            _repair_best(task, state, best_path, "the weights of last.pt")
        if state.epoch > settings.epochs:
            log.info("%s: already trained for its %d epochs with this config and these inputs; "
                     "its results are published again (delete %s to train it anew, e.g. after a "
                     "code change)", last_path, settings.epochs, out_dir)
        else:
            log.info("%s: resuming at epoch %d, batch %d (%s)", last_path, state.epoch,
                     state.step_in_epoch, state.phase)

    def save_last() -> None:
        save_checkpoint({"model": task.model.state_dict(),
                         "optimizer": task.optimizer.state_dict(),
                         "state": dataclasses.asdict(state), "rng": rng_state(),
                         "extra": task.extra_state(), "meta": meta}, last_path)

    precision = resolve_precision(settings.precision, task.device)
    log.info("precision: %s", precision.describe())
    with StopSignals() as stop, precision.training():
        if fresh:
            _score_starting_point(task, settings, state, stop, best_path, precision)
            save_last()
        while state.epoch <= settings.epochs:
            if state.phase == "train":
                _train_epoch(task, settings, state, stop, save_last, precision)
                state.phase = "validate"
                save_last()
            _stop_if_requested(stop, state, f"after the training steps of epoch {state.epoch}")
            started = time.monotonic()
            task.model.eval()
            try:
                with precision.autocast():
                    metrics = task.validate(state.epoch, lambda: stop.requested)
            except ValidationInterrupted:
                raise Preempted(f"signal {stop.signum} while validating epoch {state.epoch}; "
                                f"{last_path} holds the trained epoch", stop.signum or 15
                                ) from None
            finally:
                task.model.train()
            if settings.score_key not in metrics:
                raise KeyError(f"validation returned {sorted(metrics)}, not the selection metric "
                               f"{settings.score_key!r}")
            row = {"epoch": state.epoch, "steps": state.step_in_epoch,
                   "train_loss": state.epoch_loss_sum / max(state.epoch_loss_steps, 1),
                   "nonfinite_steps": state.epoch_nonfinite, "lr": state.last_lr,
                   "wall_s": state.epoch_wall_s, "val_wall_s": time.monotonic() - started,
                   **{k: float(v) for k, v in metrics.items()}}
            state.history.append(row)
            score = float(metrics[settings.score_key])
            log.info("epoch %d/%d done: train loss %.4f, %s %.2f%s (train %s, validation %s)",
                     state.epoch, settings.epochs, row["train_loss"],
                     settings.score_name or settings.score_key, score * settings.score_scale,
                     " (best so far)" if score > state.best_score else "",
                     format_duration(row["wall_s"]), format_duration(row["val_wall_s"]))
            if score > state.best_score:  # strictly: a tie keeps the earlier epoch
                state.best_score, state.best_epoch = score, state.epoch
                state.best_metrics = {k: float(v) for k, v in metrics.items()}
                state.best_sha256 = save_checkpoint(task.best_checkpoint(state.epoch, metrics),
                                                    best_path)
            state.epoch += 1
            state.phase, state.step_in_epoch = "train", 0
            state.epoch_loss_sum, state.epoch_loss_steps = 0.0, 0
            state.epoch_nonfinite, state.epoch_wall_s = 0, 0.0
            save_last()
            write_json(out_dir / "history.json", state.history)
            _stop_if_requested(stop, state, f"after epoch {state.epoch - 1}")
    _check_best(task, settings, state, best_path, out_dir)
    write_json(out_dir / "history.json", state.history)  # also after a kill before the last one
    return FitResult(state.best_score, state.best_epoch, state.history, best_path, last_path,
                     state.best_sha256)


def _best_problem(best_path: Path, state: LoopState) -> str | None:
    """What is wrong with ``best.pt`` against the digest ``last.pt`` recorded (None: nothing)."""
    if not best_path.exists():
        return "it is missing"
    if best_path.is_dir():
        return "it is a folder"
    if state.best_sha256:
        if file_sha256(best_path) != state.best_sha256:
            return ("its bytes are not those written for that epoch (truncated, damaged or "
                    "replaced)")
        return None
    try:  # a last.pt of before the digests: at least the file must load and be that epoch
        ck = load_checkpoint(best_path)
    except CheckpointError as err:
        return str(err)
    if ck.get("epoch") != state.best_epoch:
        return f"it holds epoch {ck.get('epoch')}, not the selected epoch {state.best_epoch}"
    return None


def _model_holds_best(state: LoopState) -> bool:
    """Whether the weights in ``last.pt`` (and the model, once loaded) are the selected epoch's:
    saved at the end of that epoch, before any step of the next."""
    return (state.best_epoch >= 1 and state.best_epoch == state.epoch - 1
            and state.phase == "train" and state.step_in_epoch == 0 and bool(state.best_metrics))


def _repair_best(task: TrainingTask, state: LoopState, best_path: Path, weights: str) -> bool:
    """Rewrite ``best.pt`` from the model's current weights (which must be those of
    ``state.best_epoch``) when it does not match; return whether it was rewritten."""
    problem = _best_problem(best_path, state)
    if problem is None:
        return False
    log.warning("%s (epoch %d): %s; rewriting it from %s, which are that epoch's", best_path,
                state.best_epoch, problem, weights)
    state.best_sha256 = save_checkpoint(task.best_checkpoint(state.best_epoch,
                                                             state.best_metrics), best_path)
    return True


def _check_best(task: TrainingTask, settings: LoopSettings, state: LoopState, best_path: Path,
                out_dir: Path) -> None:
    """Make sure ``best.pt`` holds the selected epoch before the run is published: repair it
    when the model holds that epoch's weights (the last epoch), else stop with the fix."""
    if state.best_epoch == 0 and not math.isfinite(state.best_score):
        scores = [row.get(settings.score_key) for row in state.history]
        raise CheckpointError(
            f"{out_dir}: no epoch has a finite {settings.score_key} ({scores}), so no model was "
            "selected; the validation data or the training diverged: look at history.json and "
            f"the log, then delete {out_dir} to train again")
    problem = _best_problem(best_path, state)
    if problem is None:
        return
    if _model_holds_best(state):
        _repair_best(task, state, best_path, "the weights of last.pt")
        return
    raise CheckpointError(
        f"{best_path}: the model selected at epoch {state.best_epoch} ({settings.score_key} "
        f"{state.best_score:.4f}) cannot be published: {problem}, and its weights are in no "
        f"other file (last.pt holds epoch {state.epoch - 1}). Delete the folder {out_dir} and "
        "rerun to train this run again")


def _score_starting_point(task: TrainingTask, settings: LoopSettings, state: LoopState,
                          stop: StopSignals, best_path: Path, precision: Precision) -> None:
    """Make the starting weights epoch 0 of the selection when the task says they compete."""
    task.model.eval()
    try:
        with precision.autocast():
            metrics = task.starting_point(lambda: stop.requested)
    except ValidationInterrupted:
        raise Preempted(f"signal {stop.signum} while validating the starting weights; nothing "
                        "was trained yet", stop.signum or 15) from None
    finally:
        task.model.train()
    if metrics is None:
        return
    if settings.score_key not in metrics:
        raise KeyError(f"starting point validation returned {sorted(metrics)}, not the "
                       f"selection metric {settings.score_key!r}")
    if not math.isfinite(float(metrics[settings.score_key])):
        log.warning("starting weights: %s is %s; they do not compete for best.pt",
                    settings.score_key, metrics[settings.score_key])
        return
    state.best_score, state.best_epoch = float(metrics[settings.score_key]), 0
    state.best_metrics = {k: float(v) for k, v in metrics.items()}
    state.best_sha256 = save_checkpoint(task.best_checkpoint(0, metrics), best_path)
    log.info("starting weights: %s %.2f (epoch 0 of the selection: an epoch must beat it to "
             "replace best.pt)", settings.score_name or settings.score_key,
             state.best_score * settings.score_scale)


def _stop_if_requested(stop: StopSignals, state: LoopState, where: str) -> None:
    if stop.requested:
        raise Preempted(f"signal {stop.signum} {where}; last.pt saved", stop.signum or 15)


def _train_epoch(task: TrainingTask, settings: LoopSettings, state: LoopState,
                 stop: StopSignals, save_last: Callable[[], None], precision: Precision) -> None:
    """Train the rest of ``state.epoch`` from batch ``state.step_in_epoch``.

    A step never waits for the device (:mod:`mia.training.step`): its non-finite guard is
    decided there, and the losses and flags are read back at the log lines, checkpoints, a stop
    and the end of the epoch (:func:`_flush`).
    """
    task.model.train()
    task.start_epoch(state.epoch)
    steps = task.num_batches(state.epoch)
    later = None
    if steps is not None:
        later = sum(task.num_batches(e) or 0 for e in range(state.epoch + 1, settings.epochs + 1))
    timed = [float(r["val_wall_s"]) for r in state.history if r.get("val_wall_s") is not None]
    progress = ProgressLog(log, state.epoch, settings.epochs, steps, state.step_in_epoch,
                           settings.log_every, settings.progress, task.device, later,
                           validation_s=sum(timed) / len(timed) if timed else None,
                           validations_left=settings.epochs - state.epoch + 1,
                           elapsed_before=sum(float(r.get("wall_s", 0)) + float(
                               r.get("val_wall_s", 0)) for r in state.history)
                           + state.epoch_wall_s)
    params = [p for p in task.model.parameters() if p.requires_grad]
    record = StepRecord()
    started = time.monotonic()
    try:
        for batch in task.batches(state.epoch, state.step_in_epoch):
            lr = task.set_learning_rate(state.epoch, state.global_step)
            with precision.autocast():
                loss, extras = task.loss(batch, state.epoch)
            task.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip_value > 0:
                torch.nn.utils.clip_grad_value_(params, settings.grad_clip_value)
            norm = gradient_norm(params, settings.grad_clip_norm)
            loss_ok, ok = finite_flag(loss, norm)
            step_if(task.optimizer, ok)
            state.global_step += 1
            state.step_in_epoch += 1
            state.last_lr = lr
            value = record.add(PendingStep(state.epoch, state.step_in_epoch, state.global_step,
                                           batch_ids(batch)), loss, loss_ok, ok)
            checkpoint = bool(settings.checkpoint_every
                              and state.global_step % settings.checkpoint_every == 0)
            log_line = settings.log_every > 0 and state.global_step % settings.log_every == 0
            if stop.requested or checkpoint or log_line or len(record) >= MAX_PENDING_STEPS:
                _flush(task, settings, state, record)
            progress.step(state.step_in_epoch, state.global_step, value, lr, **extras)
            if stop.requested or checkpoint:
                state.epoch_wall_s += time.monotonic() - started
                started = time.monotonic()
                save_last()
                if stop.requested:
                    raise Preempted(f"signal {stop.signum} at epoch {state.epoch}, batch "
                                    f"{state.step_in_epoch}; last.pt saved", stop.signum or 15)
        _flush(task, settings, state, record)
    finally:
        progress.close()
    state.epoch_wall_s += time.monotonic() - started


def _flush(task: TrainingTask, settings: LoopSettings, state: LoopState,
           record: StepRecord) -> None:
    """Read the recorded steps back (one transfer): add their losses to the epoch's sum in step
    order, and count, log or refuse their non-finite ones."""
    for done in record.flush():
        if done.applied:
            state.epoch_loss_sum += done.loss
            state.epoch_loss_steps += 1
        else:
            _count_nonfinite(task, settings, state, done)


def _count_nonfinite(task: TrainingTask, settings: LoopSettings, state: LoopState,
                     done: FlushedStep) -> None:
    state.nonfinite_steps += 1
    state.epoch_nonfinite += 1
    what = "gradient" if done.loss_finite else "loss"
    step = done.step
    where = f"epoch {step.epoch}, step {step.step_in_epoch} (global {step.global_step})"
    batch = task.batch_description(step.ids) if step.ids else "this batch"
    if state.nonfinite_steps > settings.max_nonfinite_steps:
        raise NonFiniteTraining(
            f"the {what} was not finite at {where} ({batch}), the "
            f"{state.nonfinite_steps}th such step of this run (at most "
            f"{settings.max_nonfinite_steps} are skipped). Corrupt inputs are the usual cause: "
            f"check {task.describe_inputs()} (`mia data verify STORE`), or rebuild them by "
            "deleting the file and rerunning its rule; otherwise lower the learning rate.")
    log.warning("non-finite %s at %s (%s): step skipped (%d of at most %d for this run)", what,
                where, batch, state.nonfinite_steps, settings.max_nonfinite_steps)

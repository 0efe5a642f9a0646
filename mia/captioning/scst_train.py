"""Self-critical training (SCST) of a cross-entropy captioner on the shared loop.

What is particular to SCST lives here; checkpoints, exact resume, signals, the non-finite guard,
gradient clipping, ``best.pt`` and ``history.json`` are :func:`mia.training.fit`'s.

* The model starts from the XE run's ``model.pt`` (its val-selected ``best.pt``), whose
  captioner config and vocabulary must match the data's; Adam continues the XE optimiser's
  state saved with it (``scst.optimizer_state: carry``, the reference) or starts anew
  (``fresh``). docs/RECIPE.md says why the val-selected XE epoch and not the last.
* The reward's scorer (:class:`mia.captioning.scst.SCSTScorer`) is built ONCE per run, from the
  training references and the document-frequency file the workflow computes once per captions
  store; the trainer never recomputes the frequencies.
* A step is one batch of ``batch_size`` training images with ``samples_per_image`` samples each
  (:func:`mia.captioning.scst.scst_step`); the sampling generator is seeded from the config and
  its state saved in ``last.pt``, so a resumed run draws the same samples as an uninterrupted one.
* Adam, a constant rate or the reference's reduce-on-plateau of val CIDEr-D (its state also in
  ``last.pt``), gradients clamped or norm-clipped as configured.
* Validation: val CIDEr-D of beam search (``val_beam_size``; 1 = greedy, the reference's), which
  also selects ``best.pt``. History rows add the epoch's mean reward, baseline and sample CIDEr-D.
* The XE starting point competes as epoch 0: it is scored by the same validation before the
  first step, and an SCST epoch replaces it in ``best.pt`` only when it scores higher, as
  self-critical.pytorch keeps the XE run's ``best_val_score`` (``load_best_score``, default 1)
  when RL training starts from it. An SCST stage that never beats XE yields the XE weights.

``best.pt`` has the XE checkpoint's keys (``model``, ``captioner``, ``vocab``), so
:func:`mia.captioning.decode.decode_split` reads it as any captioner, plus ``scst`` (the config)
and ``xe_model`` (the epoch and val CIDEr-D of the starting point).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mia.captioning.config import CaptionerConfig
from mia.captioning.decode import caption_split, vocab_words
from mia.captioning.models import build_captioner
from mia.captioning.scst import SCSTConfig, SCSTScorer, scst_step, training_references
from mia.evaluation.cider import CiderD
from mia.runtime import move_batch, resolve_device, seed_everything
from mia.training.checkpoint import load_checkpoint
from mia.training.loop import FitResult, LoopSettings, TrainingTask, ValidationInterrupted, fit
from mia.training.step import adam_options

log = logging.getLogger(__name__)

__all__ = ["PlateauSchedule", "SCSTTask", "carry_optimizer_state", "loop_settings",
           "train_scst"]


class PlateauSchedule:
    """``torch.optim.lr_scheduler.ReduceLROnPlateau`` as self-critical.pytorch drives it: mode
    "min" on ``-CIDEr-D``, relative threshold 1e-4, no cooldown, no minimum rate.

    So an epoch counts as an improvement when its score exceeds ``best * (1 - 1e-4)`` (for a
    positive best: a score a hair BELOW the best still counts, a quirk of minimising the negated
    score that is kept). Its state is two numbers, saved in ``last.pt`` as plain floats.
    """

    threshold = 1e-4
    eps = 1e-8  # torch's: rates changing by less are left alone

    def __init__(self, factor: float, patience: int) -> None:
        self.factor, self.patience = factor, patience
        self.best = math.inf  # of -score
        self.bad_epochs = 0

    def step(self, score: float, optimizer: torch.optim.Optimizer) -> bool:
        """Record one validation score; reduce the rates when patience ran out (True then)."""
        current = -float(score)
        if current < self.best * (1.0 - self.threshold):
            self.best, self.bad_epochs = current, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs <= self.patience:
            return False
        for group in optimizer.param_groups:
            old = float(group["lr"])
            new = old * self.factor
            if old - new > self.eps:
                group["lr"] = new
        self.bad_epochs = 0
        return True

    def state_dict(self) -> dict[str, float]:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.best, self.bad_epochs = float(state["best"]), int(state["bad_epochs"])


def carry_optimizer_state(optimizer: torch.optim.Optimizer, xe_checkpoint: Mapping[str, Any],
                          lr: float, where: str | os.PathLike = "the XE model") -> None:
    """Continue the XE run's Adam (``scst.optimizer_state: carry``), as self-critical.pytorch
    does: ``--start_from`` loads ``optimizer.pth`` (and a single run with
    ``self_critical_after`` never rebuilds it). Moments and step counts carry over, and so do
    the XE groups' betas, eps and weight decay (``load_state_dict`` restores them); the rate is
    SCST's ``lr`` (the reference sets it after loading)."""
    state = xe_checkpoint.get("optimizer")
    if state is None:
        raise ValueError(
            f"{where}: holds no optimizer state, and scst.optimizer_state is 'carry' (the "
            "reference continues the XE Adam); retrain the XE stage with "
            "captioning.train.keep_optimizer_state: true (the workflow sets it for baselines "
            "with an scst stage), or set scst.optimizer_state: fresh")
    try:
        optimizer.load_state_dict(state)
    except ValueError as err:
        raise ValueError(f"{where}: its optimizer state does not fit the SCST model ({err}); "
                         "was the XE model trained with a fine-tuned CNN?") from err
    for group in optimizer.param_groups:
        group["lr"] = lr
    group = optimizer.param_groups[0]
    log.info("SCST continues the XE Adam state of %s (betas %s, eps %g, weight decay %g)",
             where, tuple(group["betas"]), group["eps"], group["weight_decay"])


def loop_settings(cfg: SCSTConfig) -> LoopSettings:
    clip = cfg.grad_clip
    return LoopSettings(epochs=cfg.epochs, checkpoint_every=cfg.checkpoint_every,
                        log_every=cfg.log_every, progress=cfg.progress,
                        grad_clip_norm=clip if cfg.grad_clip_mode == "norm" else 0.0,
                        grad_clip_value=clip if cfg.grad_clip_mode == "value" else 0.0,
                        max_nonfinite_steps=cfg.max_nonfinite_steps, score_key="val_cider",
                        score_scale=100.0, score_name="val CIDEr-D (x100)",
                        precision=cfg.precision)


_STATS = ("reward", "baseline", "sample_cider", "greedy_cider", "sample_tokens", "reward_ms")


class SCSTTask(TrainingTask):
    """SCST steps on image batches; selection on val CIDEr-D."""

    def __init__(self, cfg: SCSTConfig, data: Any, xe_model: str | os.PathLike,
                 document_frequency: str | os.PathLike,
                 inputs: str = "the input stores") -> None:
        self.cfg, self.data, self.inputs = cfg, data, inputs
        self.words = vocab_words(data.vocab)
        seed_everything(cfg.seed)
        device = resolve_device(cfg.device)
        ck = load_checkpoint(xe_model)
        missing = [k for k in ("model", "captioner", "vocab") if k not in ck]
        if missing:
            raise ValueError(f"{xe_model}: not a captioner checkpoint (no {missing}); SCST starts "
                             "from the model.pt of a cross-entropy run")
        if list(ck["vocab"]) != self.words:
            raise ValueError(f"{xe_model}: trained with another vocabulary ({len(ck['vocab'])} "
                             f"words) than the captions store's ({len(self.words)}); train the "
                             "XE model on the same captions store")
        self.captioner = CaptionerConfig.from_dict(ck["captioner"], f"{xe_model}: captioner")
        if self.captioner.fine_tune_cnn_after_epoch is not None:
            raise ValueError(f"{xe_model}: SCST from a captioner that fine-tunes its CNN is not "
                             "supported (it reads images, not stored features)")
        model = build_captioner(self.captioner, len(self.words))
        model.load_state_dict(ck["model"])
        self.model = model.to(device).train()
        place = getattr(data, "place", None)
        if callable(place):  # features on the GPU when they fit (mia.data.loaders)
            log.info("features: %s", place(device))
        self.xe = {"epoch": ck.get("epoch"), "val_cider": ck.get("val_cider")}
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=cfg.betas,
                                          eps=cfg.eps, weight_decay=cfg.weight_decay,
                                          **adam_options(device))
        if cfg.optimizer_state == "carry":
            carry_optimizer_state(self.optimizer, ck, cfg.lr, xe_model)
        self.plateau = (PlateauSchedule(cfg.plateau_factor, cfg.plateau_patience)
                        if cfg.lr_schedule == "plateau" else None)
        # The reward: built once per run from the training references and the stored frequencies.
        self.scorer = SCSTScorer.from_file(training_references(data), document_frequency,
                                           self.words)
        self.val_scorer = CiderD(data.references("val"))
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(cfg.seed)
        self._sums: dict[str, float] = dict.fromkeys(_STATS, 0.0)
        self._steps, self._sums_epoch = 0, 0

    # ---------------------------------------------------------------- what resume must match
    def meta(self) -> dict[str, Any]:
        return {"scst": dataclasses.asdict(self.cfg),
                "captioner": dataclasses.asdict(self.captioner), "vocab": self.words,
                "xe_model": dict(self.xe)}

    def extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(),
                "generator_device": self.generator.device.type,
                "plateau": None if self.plateau is None else self.plateau.state_dict(),
                "epoch_stats": {"epoch": self._sums_epoch, "steps": self._steps,
                                **self._sums}}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        if self.plateau is not None:
            self.plateau.load_state_dict(state["plateau"])
        stats = dict(state["epoch_stats"])
        self._sums_epoch, self._steps = int(stats.pop("epoch")), int(stats.pop("steps"))
        self._sums = {k: float(stats[k]) for k in _STATS}
        saved = state.get("generator_device", self.generator.device.type)
        try:
            if saved != self.generator.device.type:
                raise RuntimeError(f"written on {saved}")
            self.generator.set_state(state["generator"])
        except RuntimeError as err:
            # `device` may change between attempts (mia.training.IGNORED_KEYS), but a CPU and a
            # CUDA generator have different states: re-seed from where the run stands.
            seed = self.cfg.seed * 1_000_003 + self._sums_epoch * 10_007 + self._steps
            self.generator.manual_seed(seed)
            log.warning("the sampling generator's state in last.pt (%s) does not fit this "
                        "attempt's %s generator; re-seeded it (%d): training goes on, with other "
                        "samples than an uninterrupted run would draw", err,
                        self.generator.device.type, seed)

    # ---------------------------------------------------------------- training
    def batches(self, epoch: int, start: int) -> Iterable[Any]:
        return self.data.train_image_batches(epoch, self.cfg.batch_size, self.cfg.seed,
                                             start=start)

    def num_batches(self, epoch: int) -> int | None:
        rows = getattr(self.data, "split_rows", None)
        return -(-len(rows("train")) // self.cfg.batch_size) if callable(rows) else None

    def set_learning_rate(self, epoch: int, global_step: int) -> float:
        if self.plateau is None:
            for group in self.optimizer.param_groups:
                group["lr"] = self.cfg.lr
        return float(self.optimizer.param_groups[0]["lr"])

    def loss(self, batch: Any, epoch: int) -> tuple[Tensor, dict[str, float]]:
        ids = batch["image_ids"]
        host_ids = ids.tolist() if ids.device.type == "cpu" else None  # no sync for the ids
        batch = move_batch(batch, self.device)
        loss, stats = scst_step(self.model, batch, self.scorer, self.cfg, self.generator,
                                image_ids=host_ids)
        if epoch != self._sums_epoch:
            self._sums, self._steps, self._sums_epoch = dict.fromkeys(_STATS, 0.0), 0, epoch
        values = stats.as_dict()
        for key in _STATS:
            self._sums[key] += values[key] if math.isfinite(values[key]) else 0.0
        self._steps += 1
        extras = {"reward": stats.reward, "baseline": stats.baseline,
                  "sample_cider": stats.sample_cider, "tokens": stats.sample_tokens,
                  "reward_ms": stats.reward_ms}
        if self.cfg.baseline == "greedy":
            extras["greedy_cider"] = stats.greedy_cider
        return loss, extras

    # ---------------------------------------------------------------- validation
    def val_cider(self, should_stop: Callable[[], bool]) -> float:
        """Val CIDEr-D of beam search; raises :class:`ValidationInterrupted` when told to stop."""
        captions = caption_split(self.model, self.data, "val", self.cfg.val_beam_size,
                                 self.cfg.max_length, self.cfg.val_batch_size,
                                 should_stop=should_stop, step_mode=self.cfg.decode_step)
        if captions is None:
            raise ValidationInterrupted
        return float(self.val_scorer.score(captions)[0])

    def starting_point(self, should_stop: Callable[[], bool]) -> Mapping[str, float]:
        return {"val_cider": self.val_cider(should_stop)}

    def validate(self, epoch: int, should_stop: Callable[[], bool]) -> dict[str, float]:
        score = self.val_cider(should_stop)
        metrics = {"val_cider": score}
        if self._sums_epoch == epoch and self._steps:
            keys = [k for k in _STATS if k != "greedy_cider" or self.cfg.baseline == "greedy"]
            metrics.update({f"train_{k}": self._sums[k] / self._steps for k in keys})
        if self.plateau is not None and self.plateau.step(score, self.optimizer):
            log.info("val CIDEr-D %.2f (x100): no improvement for %d epoch(s); learning rate now "
                     "%.3g", 100 * score, self.cfg.plateau_patience + 1,
                     float(self.optimizer.param_groups[0]["lr"]))
        return metrics

    def best_checkpoint(self, epoch: int, metrics: Mapping[str, float]) -> dict[str, Any]:
        return {"model": self.model.state_dict(), **self.meta(), "epoch": epoch,
                "val_cider": float(metrics["val_cider"])}

    def describe_inputs(self) -> str:
        return self.inputs


def train_scst(cfg: SCSTConfig, data: Any, xe_model_path: str | os.PathLike,
               out_dir: str | os.PathLike, df_path: str | os.PathLike,
               inputs: str = "the input stores") -> FitResult:
    """SCST of the captioner in ``xe_model_path`` on ``data`` (a
    :class:`mia.data.loaders.CaptionData`) into ``out_dir``, with the training document
    frequencies of ``df_path`` (:func:`mia.captioning.scst.write_store_document_frequency`).
    Resumes from ``out_dir/last.pt``; raises :class:`mia.training.Preempted` on a stop signal.
    ``inputs`` names the stores for error messages."""
    task = SCSTTask(cfg, data, xe_model_path, df_path, inputs)
    xe_val = task.xe["val_cider"]
    log.info("SCST of %s/%s from %s (XE epoch %s, val CIDEr-D %s): %d epochs, %d images x %d "
             "samples a step, %s baseline, lr %.3g %s", task.captioner.baseline,
             task.captioner.variant, xe_model_path, task.xe["epoch"],
             f"{100 * xe_val:.2f} (x100)" if isinstance(xe_val, int | float) else xe_val,
             cfg.epochs, cfg.batch_size, cfg.samples_per_image, cfg.baseline, cfg.lr,
             cfg.lr_schedule)
    return fit(task, loop_settings(cfg), Path(out_dir))

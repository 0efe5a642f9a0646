"""Cross-entropy training of a captioner on the shared loop (:mod:`mia.training.loop`).

This module says only what is particular to XE captioning: the model and Adam optimiser, the
learning-rate schedule, the label-smoothed loss over real tokens, and validation by CIDEr-D of
greedy (or beam) decodes of the val split. Checkpoints, resume, signals, the non-finite guard and
``history.json`` are the loop's (see its docstring for the files written).

``best.pt`` holds the weights of the best val CIDEr-D with the captioner config and vocabulary,
which :func:`mia.captioning.decode.decode_split` reads.
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
import torch.nn.functional as F
from torch import Tensor

from mia.captioning import finetune
from mia.captioning.beam import PAD
from mia.captioning.config import TrainConfig
from mia.captioning.decode import caption_split, vocab_words
from mia.captioning.models import build_captioner, trim_captions
from mia.captioning.transformer import noam_learning_rate
from mia.captioning.updown import scheduled_sampling_probability
from mia.data.loaders import prefetch
from mia.dtypes import at_least_float32
from mia.evaluation.cider import CiderD
from mia.runtime import move_batch, resolve_device, seed_everything
from mia.training.lifecycle import PREEMPTED_EXIT_CODE, Preempted
from mia.training.loop import FitResult, LoopSettings, TrainingTask, ValidationInterrupted, fit
from mia.training.precision import float32_region
from mia.training.step import adam_options

log = logging.getLogger(__name__)

__all__ = ["PREEMPTED_EXIT_CODE", "Preempted", "TrainResult", "caption_loss", "learning_rate",
           "train_captioner"]

TrainResult = FitResult


def learning_rate(cfg: TrainConfig, epoch: int, global_step: int) -> float:
    """LR at ``global_step`` (0-based) of 1-based ``epoch``; see :class:`TrainConfig`."""
    if cfg.lr_schedule == "noam":
        return noam_learning_rate(global_step + 1, cfg.captioner.d_model, cfg.warmup_steps,
                                  cfg.noam_factor)
    lr = cfg.lr
    if cfg.warmup_steps > 0:
        lr *= min(1.0, (global_step + 1) / cfg.warmup_steps)
    if epoch > cfg.lr_decay_start:
        periods = (epoch - cfg.lr_decay_start) / cfg.lr_decay_every
        if cfg.lr_decay_staircase:
            periods = math.floor(periods)
        lr *= cfg.lr_decay_factor ** periods
    return lr


def scheduled_sampling(cfg: TrainConfig, epoch: int) -> float:
    """Up-Down's scheduled-sampling probability for 1-based ``epoch`` (TrainConfig.ss_*)."""
    return scheduled_sampling_probability(epoch - 1, cfg.ss_start, cfg.ss_every, cfg.ss_increase,
                                          cfg.ss_max)


def caption_loss(logits: Tensor, targets: Tensor, label_smoothing: float) -> Tensor:
    """Label-smoothed cross-entropy averaged over the real (non-``<pad>``) target tokens, as the
    released code's ``cal_loss`` computes it.

    Per real token with target y over K classes: ``-(1 - eps) log p_y - eps/(K-1) sum_{v != y}
    log p_v``: the smoothing mass goes to the OTHER classes (PyTorch's built-in ``label_smoothing``
    instead gives eps/K to every class, the target included). ``<pad>`` targets contribute nothing
    at all, neither their one-hot nor their share of the smoothing (the released code packs the
    padded sequences away before the loss).
    """
    logp = F.log_softmax(at_least_float32(logits.reshape(-1, logits.shape[-1])), dim=-1)  # (N, K)
    targets = targets.reshape(-1)
    real = targets != PAD
    nll = -logp.gather(1, targets.unsqueeze(1)).squeeze(1)  # (N,)
    if label_smoothing > 0:
        others = (-logp.sum(dim=1) - nll) / (logp.shape[1] - 1)
        nll = (1 - label_smoothing) * nll + label_smoothing * others
    # torch.where, not nll[real]: boolean indexing sizes its output on the host (a GPU sync).
    return torch.where(real, nll, torch.zeros_like(nll)).sum() / real.sum().clamp(min=1)




def loop_settings(cfg: TrainConfig, score_key: str = "val_cider") -> LoopSettings:
    return LoopSettings(epochs=cfg.epochs, checkpoint_every=cfg.checkpoint_every,
                        log_every=cfg.log_every, progress=cfg.progress,
                        grad_clip_norm=cfg.grad_clip_norm, grad_clip_value=cfg.grad_clip_value,
                        max_nonfinite_steps=cfg.max_nonfinite_steps, score_key=score_key,
                        score_scale=100.0 if score_key == "val_cider" else 1.0,
                        score_name="val CIDEr-D (x100)" if score_key == "val_cider" else "",
                        precision=cfg.precision)


class CaptionXETask(TrainingTask):
    """Teacher-forced cross-entropy on caption batches; selection on val CIDEr-D.

    A captioner that fine-tunes its CNN (``captioner.fine_tune_cnn_after_epoch``) reads images:
    ``image_stores`` (the training and evaluation :class:`~mia.captioning.image_store.ImageStore`
    files, decoded once; what the workflow gives) or ``image_paths`` (``{image_id: file}``,
    decoded per item) must then be given; its CNN layers join the optimiser at their own fixed
    learning rate and train from the configured epoch on (:mod:`mia.captioning.finetune`).
    """

    def __init__(self, cfg: TrainConfig, data: Any, inputs: str = "the input stores",
                 image_paths: Mapping[int, str] | None = None, fresh: bool = True,
                 image_stores: tuple[str | os.PathLike, str | os.PathLike] | None = None
                 ) -> None:
        self.cfg = cfg
        self.data = data
        self.inputs = inputs
        self.words = vocab_words(data.vocab)
        seed_everything(cfg.seed)
        device = resolve_device(cfg.device)
        model = build_captioner(cfg.captioner, len(self.words))
        self.train_images = self.eval_images = None
        if model.cnn is not None:
            if fresh:
                finetune.load_imagenet_weights(model)
            cnn_cfg = cfg.captioner.cnn_config()
            if image_stores is not None:
                from mia.captioning.image_store import ImageStore

                self.train_images = ImageStore(image_stores[0], device)
                self.eval_images = ImageStore(image_stores[1], device)
            elif image_paths is not None:
                self.train_images = finetune.CaptionImages(image_paths, cnn_cfg, train=True)
                self.eval_images = finetune.CaptionImages(image_paths, cnn_cfg, train=False)
            else:
                raise ValueError(f"captioner {cfg.captioner.baseline}/{cfg.captioner.variant} "
                                 "fine-tunes its CNN and reads images: pass image_stores (the "
                                 "workflow's caption_image_store outputs) or image_paths")
        self.model = model.to(device)
        place = getattr(data, "place", None)
        if callable(place):
            log.info("features: %s", place(device))
        self.optimizer = torch.optim.Adam(finetune.parameter_groups(self.model, cfg.lr),
                                          lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                          weight_decay=cfg.weight_decay,
                                          **adam_options(self.device))
        if cfg.weight_clamp > 0:
            clamp_before_each_step(self.optimizer, self.model.decoder.parameters(),
                                   cfg.weight_clamp)
        self._optimizer_epoch = 0  # the epoch whose start last rebuilt the optimiser
        self.scorer = CiderD(data.references("val"))

    @property
    def images_per_batch(self) -> int:
        """Images of a batch by image: ``batch_size`` captions over the captions per image."""
        per_image = getattr(self.data, "captions_per_image", 5)
        return max(1, round(self.cfg.batch_size / per_image))

    def meta(self) -> dict[str, Any]:
        return {"captioner": dataclasses.asdict(self.cfg.captioner), "vocab": self.words}

    def batches(self, epoch: int, start: int) -> Iterable[Any]:
        if self.cfg.batches_by_image:
            batches = self.data.train_batches_by_image(epoch, self.images_per_batch,
                                                       self.cfg.seed, start=start)
        else:
            batches = self.data.train_batches(epoch, self.cfg.batch_size, self.cfg.seed,
                                              start=start)
        cnn = self.cfg.captioner.cnn_config()
        if isinstance(self.train_images, finetune.CaptionImages):
            batches = finetune.with_images(batches, self.train_images, cnn.workers,
                                           seed=self.cfg.seed, epoch=epoch, start=start,
                                           pin_memory=self.device.type == "cuda")
        elif self.train_images is not None:
            batches = finetune.with_store_images(batches, self.train_images, cnn, train=True,
                                                 seed=self.cfg.seed, epoch=epoch, start=start)
        if self.device.type == "cuda" and self.cfg.prefetch_batches:
            batches = prefetch(batches, self.cfg.prefetch_batches)
        return batches

    def start_epoch(self, epoch: int) -> None:
        if self.cfg.rebuild_optimizer_each_epoch and epoch != self._optimizer_epoch:
            reset_optimizer_state(self.optimizer, skip_group=finetune.CNN_GROUP)
        self._optimizer_epoch = epoch  # a resumed epoch (saved in last.pt) is not rebuilt again
        finetune.cnn_epoch_start(self.model, epoch)
        if hasattr(self.model.decoder, "ss_prob"):
            self.model.decoder.ss_prob = scheduled_sampling(self.cfg, epoch)

    def num_batches(self, epoch: int) -> int | None:
        if self.cfg.batches_by_image:
            return self.data.num_train_image_batches(self.images_per_batch)
        count = getattr(self.data, "num_train_batches", None)
        return count(self.cfg.batch_size) if callable(count) else None

    def set_learning_rate(self, epoch: int, global_step: int) -> float:
        lr = learning_rate(self.cfg, epoch, global_step)
        finetune.set_captioner_lr(self.optimizer, lr)  # a fine-tuned CNN keeps its own rate
        return lr

    def loss(self, batch: Any, epoch: int) -> tuple[Tensor, dict[str, float]]:
        # Trimmed on the host (the lengths are read there), then moved: no device sync.
        batch = move_batch(trim_captions(batch), self.device)
        logits = self.model(batch)
        extras = {}
        if getattr(self.model.decoder, "ss_prob", 0.0) > 0:
            extras["ss_prob"] = float(self.model.decoder.ss_prob)
        with float32_region(logits.device.type):
            loss = caption_loss(logits, batch["captions"][:, 1:].long(), self.cfg.label_smoothing)
        return loss, extras

    def validate(self, epoch: int, should_stop: Callable[[], bool]) -> dict[str, float]:
        captions = caption_split(self.model, self.data, "val", self.cfg.val_beam_size,
                                 self.cfg.max_length, self.cfg.val_batch_size,
                                 should_stop=should_stop, images=self.eval_images,
                                 step_mode=self.cfg.decode_step)
        if captions is None:
            raise ValidationInterrupted
        return {"val_cider": float(self.scorer.score(captions)[0])}

    def best_checkpoint(self, epoch: int, metrics: Mapping[str, float]) -> dict[str, Any]:
        out = {"model": self.model.state_dict(), **self.meta(), "epoch": epoch,
               "val_cider": float(metrics["val_cider"])}
        if self.cfg.keep_optimizer_state:  # what SCST carries over (scst.optimizer_state)
            out["optimizer"] = self.optimizer.state_dict()
        return out

    def extra_state(self) -> dict[str, Any]:
        return {"optimizer_epoch": self._optimizer_epoch}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        self._optimizer_epoch = int(state.get("optimizer_epoch", 0))

    def describe_inputs(self) -> str:
        return self.inputs


def clamp_before_each_step(optimizer: torch.optim.Optimizer, parameters: Iterable[Tensor],
                           bound: float) -> None:
    """Clamp ``parameters`` to ``[-bound, bound]`` at the start of every ``optimizer.step()``:
    the released ``Train.py`` runs ``p.data.clamp_(-clip, clip)`` over ``Model.decoder`` after
    ``backward`` and before ``optimizer.step()``. Not gradient clipping: the weights themselves
    (the word embedding shared with the concepts included) stay within the bound."""
    params = list(parameters)

    def clamp(*_: Any) -> None:
        # A step the non-finite guard skips on the device (mia.training.step: fused Adam's
        # found_inf) clamps nothing, as a skipped step never reached optimizer.step() before.
        skipped = getattr(optimizer, "found_inf", None)
        with torch.no_grad():
            for p in params:
                if skipped is None:
                    p.clamp_(-bound, bound)
                else:
                    p.copy_(torch.where(skipped.bool(), p, p.clamp(-bound, bound)))

    optimizer.register_step_pre_hook(clamp)


def reset_optimizer_state(optimizer: torch.optim.Optimizer, skip_group: str | None = None) -> None:
    """Forget the per-parameter state (Adam's moments and step counts) of every group except
    ``skip_group``: the same optimiser as a newly built one (the released code rebuilds the
    captioner's Adam every epoch; its CNN optimiser is built once and kept)."""
    for group in optimizer.param_groups:
        if skip_group is not None and group.get("name") == skip_group:
            continue
        for p in group["params"]:
            optimizer.state.pop(p, None)


def train_captioner(cfg: TrainConfig, data: Any, out_dir: str | os.PathLike,
                    inputs: str = "the input stores",
                    image_paths: Mapping[int, str] | None = None,
                    image_stores: tuple[str | os.PathLike, str | os.PathLike] | None = None
                    ) -> FitResult:
    """Train ``cfg.captioner`` on ``data`` (a :class:`mia.data.loaders.CaptionData`) into
    ``out_dir``; resumes from ``out_dir/last.pt``; raises :class:`Preempted` on a stop signal.
    ``inputs`` names the stores for error messages; ``image_stores`` (train, eval) or
    ``image_paths`` is needed by captioners that fine-tune their CNN."""
    out_dir = Path(out_dir)
    task = CaptionXETask(cfg, data, inputs, image_paths, fresh=not (out_dir / "last.pt").exists(),
                         image_stores=image_stores)
    return fit(task, loop_settings(cfg), out_dir)

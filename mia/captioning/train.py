"""Cross-entropy training of a captioner, with validation-based selection and exact resume.

Outputs in ``out_dir``:

* ``best.pt``: the weights with the highest validation CIDEr-D so far (never the test split), with
  the captioner config and vocabulary, which :func:`mia.captioning.decode.decode_split` reads;
* ``last.pt``: everything needed to continue (model, optimiser, epoch, batches done in the epoch,
  RNG states, best score, history), written every ``checkpoint_every`` steps, at every epoch end,
  and when the job is asked to stop;
* ``history.json``: one row per epoch: train loss, val CIDEr-D, learning rate (of the epoch's last
  step), training and validation wall time in seconds.

Preemption: SIGTERM or SIGUSR1 (what Slurm sends before killing a job) sets a flag; at the next
step boundary the loop writes ``last.pt`` and raises :class:`Preempted`, whose ``exit_code`` (75,
EX_TEMPFAIL) the calling script should exit with so the scheduler can requeue it. A restarted call
with the same arguments resumes from ``last.pt`` and ends with exactly the weights and metrics of an
uninterrupted run on CPU: the data order is a function of (seed, epoch) and the loader skips the
batches already done, the RNG states are restored, and the learning rate is a pure function of
(epoch, step), so the optimiser state is the only scheduler state.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mia.captioning.beam import PAD
from mia.captioning.checkpoint import atomic_save, load_checkpoint, rng_state, set_rng_state
from mia.captioning.config import TrainConfig
from mia.captioning.decode import caption_split, move_batch, resolve_device, vocab_words
from mia.captioning.models import build_captioner
from mia.evaluation.cider import CiderD
from mia.io import write_json

log = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again", distinct from a crash


class Preempted(RuntimeError):
    """Training stopped on a signal after saving ``last.pt``; exit with :attr:`exit_code`."""

    exit_code = PREEMPTED_EXIT_CODE


@dataclass
class TrainResult:
    best_val_cider: float
    best_epoch: int
    history: list[dict[str, Any]]
    best_path: Path
    last_path: Path


@dataclass
class _Progress:
    """Where training stands; saved in ``last.pt``."""

    epoch: int = 1  # 1-based epoch being trained
    step_in_epoch: int = 0  # batches of this epoch already done
    global_step: int = 0
    best_val_cider: float = -math.inf
    best_epoch: int = 0
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    epoch_loss_sum: float = 0.0
    epoch_wall_s: float = 0.0


class _StopSignals:
    """Context manager: SIGTERM/SIGUSR1 set ``self.signum`` instead of killing the process."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():  # signal() works only there
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def learning_rate(cfg: TrainConfig, epoch: int, global_step: int) -> float:
    """LR at ``global_step`` (0-based) of 1-based ``epoch``; see :class:`TrainConfig`."""
    lr = cfg.lr
    if cfg.warmup_steps > 0:
        lr *= min(1.0, (global_step + 1) / cfg.warmup_steps)
    if epoch > cfg.lr_decay_start:
        periods = (epoch - cfg.lr_decay_start) / cfg.lr_decay_every
        if cfg.lr_decay_staircase:
            periods = math.floor(periods)
        lr *= cfg.lr_decay_factor ** periods
    return lr


def caption_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float
                 ) -> torch.Tensor:
    """Label-smoothed cross-entropy averaged over the real (non-``<pad>``) target tokens."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=PAD, label_smoothing=label_smoothing)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def train_captioner(cfg: TrainConfig, data: Any, out_dir: str | os.PathLike) -> TrainResult:
    """Train ``cfg.captioner`` on ``data`` (a :class:`mia.data.loaders.CaptionData`).

    Resumes from ``out_dir/last.pt`` when present; raises :class:`Preempted` on SIGTERM/SIGUSR1.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    device = resolve_device(cfg.device)
    words = vocab_words(data.vocab)
    captioner_cfg = dataclasses.asdict(cfg.captioner)

    _seed_everything(cfg.seed)
    model = build_captioner(cfg.captioner, len(words)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas,
                                 weight_decay=cfg.weight_decay)  # built once, kept in last.pt
    progress = _Progress()
    if last_path.exists():
        # On CPU: RNG states must stay CPU tensors; load_state_dict moves the rest to the device.
        ck = load_checkpoint(last_path, map_location="cpu")
        if ck["captioner"] != captioner_cfg or ck["vocab"] != words:
            raise ValueError(f"{last_path}: was trained with another captioner config or "
                             "vocabulary; delete the run directory to start over")
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        progress = _Progress(**ck["progress"])
        set_rng_state(ck["rng"])
        log.info("%s: resuming at epoch %d, batch %d", last_path, progress.epoch,
                 progress.step_in_epoch)

    def save_last() -> None:
        atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "progress": dataclasses.asdict(progress), "rng": rng_state(),
                     "captioner": captioner_cfg, "vocab": words,
                     "train": dataclasses.asdict(cfg)}, last_path)

    scorer = CiderD(data.references("val"))
    with _StopSignals() as stop:
        while progress.epoch <= cfg.epochs:
            _train_epoch(cfg, model, optimizer, data, progress, stop, device, save_last)
            val_started = time.monotonic()
            val_cider = float(scorer.score(caption_split(
                model, data, "val", cfg.val_beam_size, cfg.max_length, cfg.val_batch_size))[0])
            steps = progress.step_in_epoch
            progress.history.append({
                "epoch": progress.epoch, "steps": steps,
                "train_loss": progress.epoch_loss_sum / max(steps, 1), "val_cider": val_cider,
                "lr": learning_rate(cfg, progress.epoch, progress.global_step - 1),
                "wall_s": progress.epoch_wall_s, "val_wall_s": time.monotonic() - val_started})
            log.info("epoch %d: %s", progress.epoch, progress.history[-1])
            if val_cider > progress.best_val_cider:
                progress.best_val_cider, progress.best_epoch = val_cider, progress.epoch
                atomic_save({"model": model.state_dict(), "captioner": captioner_cfg,
                             "vocab": words, "epoch": progress.epoch, "val_cider": val_cider},
                            best_path)
            progress.epoch += 1
            progress.step_in_epoch, progress.epoch_loss_sum, progress.epoch_wall_s = 0, 0.0, 0.0
            save_last()
            write_json(out_dir / "history.json", progress.history)
            if stop.signum is not None:
                raise Preempted(f"signal {stop.signum} after epoch {progress.epoch - 1}; "
                                f"{last_path} saved")
    return TrainResult(progress.best_val_cider, progress.best_epoch, progress.history,
                       best_path, last_path)


def _train_epoch(cfg: TrainConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 data: Any, progress: _Progress, stop: _StopSignals, device: torch.device,
                 save_last: Any) -> None:
    """Train the rest of ``progress.epoch`` from batch ``progress.step_in_epoch``."""
    model.train()
    batches = data.train_batches(progress.epoch, cfg.batch_size, cfg.seed,
                                 start=progress.step_in_epoch)
    count = getattr(data, "num_train_batches", None)
    total = count(cfg.batch_size) if callable(count) else None
    started = time.monotonic()
    bar = tqdm(batches, desc=f"epoch {progress.epoch}/{cfg.epochs}", total=total,
               initial=progress.step_in_epoch, disable=not cfg.progress, leave=False)
    for batch in bar:
        lr = learning_rate(cfg, progress.epoch, progress.global_step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = move_batch(batch, device)
        loss = caption_loss(model(batch), batch["captions"][:, 1:].long(), cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm)
        optimizer.step()
        progress.global_step += 1
        progress.step_in_epoch += 1
        progress.epoch_loss_sum += loss.item()
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")
        if stop.signum is not None or (cfg.checkpoint_every
                                       and progress.global_step % cfg.checkpoint_every == 0):
            progress.epoch_wall_s += time.monotonic() - started
            started = time.monotonic()
            save_last()
            if stop.signum is not None:
                raise Preempted(f"signal {stop.signum} at epoch {progress.epoch}, batch "
                                f"{progress.step_in_epoch}; last.pt saved")
    progress.epoch_wall_s += time.monotonic() - started

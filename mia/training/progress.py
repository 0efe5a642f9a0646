"""Progress of a long training job: a log line every N steps, a bar when someone is watching.

A days-long job on a cluster is watched through its log file, so the log gets a line every
``log_every`` steps whatever the terminal: step, loss (mean since the last line), learning rate,
steps per second, ETA of the epoch and of the run, and memory (resident set size; CUDA peak when
on a GPU). A progress bar (tqdm) is drawn only on the job's terminal (:func:`mia.runlog.console`),
never into the log.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from mia import runlog


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def memory_summary(device: torch.device | None = None) -> str:
    """Peak resident memory of this process, plus peak CUDA memory when training on a GPU."""
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    text = f"rss {peak_kb / 2**20:.2f} GB"
    if device is not None and device.type == "cuda":
        text += f", cuda {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GB"
    return text


@dataclass
class ProgressLog:
    """Progress of one epoch. ``steps`` is the epoch's batch count when known."""

    logger: logging.Logger
    epoch: int
    epochs: int
    steps: int | None
    start_step: int
    log_every: int = 100
    bar: bool | str = "auto"  # True, False, or "auto" = when a terminal watches
    device: torch.device | None = None
    remaining_epochs_steps: int | None = None  # steps of the epochs after this one, for the ETA
    _t0: float = field(default=0.0, init=False)
    _t_last: float = field(default=0.0, init=False)
    _losses: list[Any] = field(default_factory=list, init=False)  # floats or 0-d tensors
    _t_bar: float = field(default=0.0, init=False)
    _done: int = field(default=0, init=False)
    _tqdm: Any = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._t0 = self._t_last = time.monotonic()
        stream = runlog.console() if self.bar == "auto" else (sys.stderr if self.bar else None)
        if stream is not None:
            self._tqdm = tqdm(total=self.steps, initial=self.start_step, file=stream,
                              desc=f"epoch {self.epoch}/{self.epochs}", leave=False,
                              dynamic_ncols=True)

    def step(self, step_in_epoch: int, global_step: int, loss: float | torch.Tensor, lr: float,
             **extra: float | torch.Tensor) -> None:
        """Record one finished step (1-based ``step_in_epoch``).

        ``loss`` and ``extra`` may be 0-d tensors still being computed on the GPU: they are read
        only for a log line (every ``log_every`` steps) or, when a terminal watches, for the bar
        at most once a second, so recording a step never waits for the device.
        """
        self._done += 1
        self._losses.append(loss.detach() if torch.is_tensor(loss) else loss)
        if self._tqdm is not None:
            self._tqdm.update(1)
            now = time.monotonic()
            if now - self._t_bar >= 1.0:
                self._tqdm.set_postfix(loss=f"{float(loss):.3f}", lr=f"{lr:.1e}", refresh=False)
                self._t_bar = now
        if self.log_every > 0 and global_step % self.log_every == 0:
            self._log_line(step_in_epoch, global_step, lr, extra)

    def _log_line(self, step_in_epoch: int, global_step: int, lr: float,
                  extra: dict[str, float]) -> None:
        now = time.monotonic()
        rate = self._done / max(now - self._t0, 1e-9)
        where = f"{step_in_epoch}/{self.steps}" if self.steps else str(step_in_epoch)
        eta = ""
        if self.steps:
            left = self.steps - step_in_epoch
            eta = f", ETA epoch {format_duration(left / rate)}"
            if self.remaining_epochs_steps is not None:
                eta += f", run {format_duration((left + self.remaining_epochs_steps) / rate)}"
        more = "".join(f" {k} {float(v):.4g}" for k, v in extra.items())
        self.logger.info("epoch %d/%d step %s (global %d) loss %.4f lr %.3g %.2f steps/s%s%s, %s",
                         self.epoch, self.epochs, where, global_step, self._mean_loss(), lr, rate,
                         eta, more, memory_summary(self.device))
        self._losses, self._t_last = [], now

    def _mean_loss(self) -> float:
        """Mean loss since the last line, read from the device in one transfer."""
        if not self._losses:
            return 0.0
        values = [torch.as_tensor(v, dtype=torch.float64).cpu() if not torch.is_tensor(v)
                  else v for v in self._losses]
        devices = {v.device for v in values}
        if len(devices) == 1:
            return float(torch.stack([v.double() for v in values]).mean())
        return sum(float(v) for v in values) / len(values)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()

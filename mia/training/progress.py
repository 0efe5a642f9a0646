"""Progress of a long training job: a log line every N steps, a bar when someone is watching.

A days-long job on a cluster is watched through its log file, so the log gets a line every
``log_every`` steps whatever the terminal: step, loss (mean since the last line), learning rate,
steps per second, the time left in the epoch and in the run, the time elapsed, and memory
(resident set size; CUDA peak when on a GPU). The run's time left counts the validations still
to come (their mean duration so far: decoding the val split can take as long as an epoch), and
says when it has none to go on yet. The bar (tqdm) follows ``progress`` as
:func:`mia.progress.bar_stream` says, never into the log.
"""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from mia.progress import Bar, format_duration

__all__ = ["ProgressLog", "format_duration", "memory_summary"]


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
    validation_s: float | None = None  # mean duration of a validation so far (None: none yet)
    validations_left: int = 0  # validations still to run, this epoch's included
    elapsed_before: float = 0.0  # seconds the run trained and validated before this epoch part
    _t0: float = field(default=0.0, init=False)
    _t_last: float = field(default=0.0, init=False)
    _losses: list[Any] = field(default_factory=list, init=False)  # floats or 0-d tensors
    _t_bar: float = field(default=0.0, init=False)
    _done: int = field(default=0, init=False)
    _bar: Any = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._t0 = self._t_last = time.monotonic()
        self._bar = Bar(self.bar, self.steps, self.start_step, f"epoch {self.epoch}/{self.epochs}")

    def step(self, step_in_epoch: int, global_step: int, loss: float | torch.Tensor, lr: float,
             **extra: float | torch.Tensor) -> None:
        """Record one finished step (1-based ``step_in_epoch``).

        ``loss`` and ``extra`` may be 0-d tensors still being computed on the GPU: they are read
        only for a log line (every ``log_every`` steps) or, when a bar is drawn, for its label
        at most once a second, so recording a step never waits for the device.
        """
        self._done += 1
        self._losses.append(loss.detach() if torch.is_tensor(loss) else loss)
        now = time.monotonic()
        if self._bar.tqdm is not None and now - self._t_bar >= 1.0:
            self._bar.update(1, loss=f"{float(loss):.3f}", lr=f"{lr:.1e}")
            self._t_bar = now
        else:
            self._bar.update(1)
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
            eta = f", epoch left {format_duration(left / rate)}"
            if self.remaining_epochs_steps is not None:
                train_left = (left + self.remaining_epochs_steps) / rate
                if self.validations_left == 0:
                    eta += f", run left {format_duration(train_left)}"
                elif self.validation_s is None:
                    eta += (f", run left {format_duration(train_left)} + {self.validations_left} "
                            "validation(s) not timed yet")
                else:
                    total = train_left + self.validations_left * self.validation_s
                    eta += (f", run left {format_duration(total)} (incl. {self.validations_left} "
                            f"validation(s) of ~{format_duration(self.validation_s)})")
        eta += f", run elapsed {format_duration(self.elapsed_before + now - self._t0)}"
        more = "".join(f" {k} {float(v):.4g}" for k, v in extra.items())
        self.logger.info("epoch %d/%d step %s (global %d) loss %.4f lr %.3g %.2f steps/s%s%s, %s",
                         self.epoch, self.epochs, where, global_step, self._mean_loss(), lr, rate,
                         eta, more, memory_summary(self.device))
        self._losses, self._t_last = [], now

    def _mean_loss(self) -> float:
        """Mean loss since the last line, read from the device in one transfer."""
        if not self._losses:
            return 0.0
        values = [v if torch.is_tensor(v) else torch.tensor(float(v), dtype=torch.float64)
                  for v in self._losses]
        if len({v.device for v in values}) == 1:
            return float(torch.stack([v.double() for v in values]).mean())
        return sum(float(v) for v in values) / len(values)

    def close(self) -> None:
        self._bar.close()

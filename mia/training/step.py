"""A training step without host synchronisation: the non-finite guard decided on the device.

The loop used to ask the GPU three questions per step (is the loss finite? is the gradient norm
finite? what is the loss?), each a ``.item()`` that waits for every queued kernel, so the host
could never queue the next step while the GPU worked on this one. Here nothing leaves the device
on the common path:

* :func:`finite_flag`: one boolean tensor, loss finite AND gradient norm finite;
* :func:`step_if`: the optimiser step applied only where that flag is true, on the device:
  optimisers that support it (fused Adam, which :func:`adam_options` asks for) skip inside their
  kernel (the ``found_inf`` input of AMP's GradScaler, which also leaves ``step`` unchanged);
  any other optimiser is stepped and its parameters and state put back where the flag is false
  (:func:`_masked_step`), bit for bit, in a handful of kernels per dtype;
* :class:`StepRecord`: the flags and losses of recent steps, kept on the device and read in ONE
  transfer when the loop needs them (a log line, a checkpoint, the end of the epoch, a stop).

So a step whose loss or gradient is not finite changes no parameter and no optimiser state, as
before; it is counted, logged (with its step number and batch) and, past
``max_nonfinite_steps``, stops the run, at the next flush instead of at once: at most
``log_every`` (or ``checkpoint_every``) steps later, all of which were guarded the same way.
Losses are added to the epoch's sum in step order on the host, so ``history.json`` is the same
float whatever the flush points were (a resumed run flushes at other steps).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

#: Steps kept on the device before a flush is forced (log_every = checkpoint_every = 0).
MAX_PENDING_STEPS = 1000


def adam_options(device: torch.device | str) -> dict[str, Any]:
    """Keyword arguments for ``torch.optim.Adam`` on ``device``: the fused kernel, which skips
    a non-finite step on the device (and is one kernel instead of a dozen per step)."""
    if torch.device(device).type in ("cuda", "cpu"):
        return {"fused": True}
    return {}


def adamax_options(device: torch.device | str) -> dict[str, Any]:
    """Keyword arguments for ``torch.optim.Adamax`` (no fused kernel): ``capturable`` on CUDA,
    which keeps its step counters on the GPU, so :func:`step_if` can mask them without a sync."""
    return {"capturable": True} if torch.device(device).type == "cuda" else {}


def gradient_norm(params: list[Tensor], clip_norm: float) -> Tensor:
    """The global 2-norm of the gradients, clipping them to ``clip_norm`` when it is > 0; no
    sync (``clip_grad_norm_`` without ``error_if_nonfinite``)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=params[0].device if params else "cpu")
    if clip_norm > 0:
        return torch.nn.utils.clip_grad_norm_(params, clip_norm)
    total = getattr(torch.nn.utils, "get_total_norm", None)
    if total is not None:
        return total(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def finite_flag(loss: Tensor, grad_norm: Tensor) -> tuple[Tensor, Tensor]:
    """(loss finite, loss and gradient finite) as 0-d bool tensors on the loss's device."""
    loss_ok = torch.isfinite(loss.detach()).all()
    return loss_ok, loss_ok & torch.isfinite(grad_norm.detach()).to(loss_ok.device).all()


def step_if(optimizer: torch.optim.Optimizer, ok: Tensor) -> None:
    """``optimizer.step()`` where ``ok`` (0-d bool) is true, nothing where it is false: exact,
    and without reading ``ok`` on the host."""
    # Fused groups only: a state loaded from a for-each optimiser (an old XE run carried into
    # SCST) switches its groups back, and those kernels refuse found_inf.
    if getattr(optimizer, "_step_supports_amp_scaling", False) and all(
            group.get("fused") for group in optimizer.param_groups):
        # Fused optimisers read AMP's found_inf in-kernel: no update, step count unchanged.
        optimizer.found_inf = (~ok).to(torch.float32)  # type: ignore[attr-defined]
        optimizer.grad_scale = None  # type: ignore[attr-defined]
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf, optimizer.grad_scale  # type: ignore[attr-defined]
        return
    _masked_step(optimizer, ok)


@torch.no_grad()
def _masked_step(optimizer: torch.optim.Optimizer, ok: Tensor) -> None:
    """Step, then put back every tensor the step changed where ``ok`` is false.

    The parameters with a gradient and their state tensors are snapshotted as one flat copy per
    (device, dtype), and restored with one ``torch.where`` and one multi-tensor copy: a few
    kernels per dtype, not one per tensor. State created by this very step (the first one) is
    put back to zeros, the value every torch optimiser initialises it to.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]
              if p.grad is not None]
    before = {id(t): t for p in params for t in _state_tensors(optimizer, p)}
    tracked = params + list(before.values())
    saved = _flat_copies(tracked)
    optimizer.step()
    after = tracked + [t for p in params for t in _state_tensors(optimizer, p)
                       if id(t) not in before]
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for t in after:
        groups.setdefault((t.device, t.dtype), []).append(t)
    for (device, _), tensors in groups.items():
        old = saved.get((device, tensors[0].dtype))
        new = torch.cat([t.reshape(-1) for t in tensors])
        if old is None or old.numel() < new.numel():  # state born in this step: zeros
            old = torch.cat([old if old is not None else new.new_zeros(0),
                             new.new_zeros(new.numel() - (0 if old is None else old.numel()))])
        keep = ok if ok.device == device else ok.to(device)  # CPU state of a GPU run: a sync
        merged = torch.where(keep, new, old)
        torch._foreach_copy_(tensors, [v.view_as(t) for v, t in zip(
            merged.split([t.numel() for t in tensors]), tensors, strict=True)])


def _state_tensors(optimizer: torch.optim.Optimizer, p: Tensor) -> list[Tensor]:
    state = optimizer.state.get(p, {})
    return [v for _, v in sorted(state.items()) if torch.is_tensor(v)]


def _flat_copies(tensors: list[Tensor]) -> dict[tuple[torch.device, torch.dtype], Tensor]:
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    return {key: torch.cat([t.detach().reshape(-1) for t in ts]) for key, ts in groups.items()}


@dataclass
class PendingStep:
    """What the loop needs to know of a step once its flags are read."""

    epoch: int
    step_in_epoch: int  # 1-based
    global_step: int  # 1-based
    ids: Mapping[str, Any]  # the batch's id tensors, for the warning


@dataclass
class FlushedStep:
    step: PendingStep
    loss: float  # NaN when skipped
    loss_finite: bool
    applied: bool


@dataclass
class StepRecord:
    """Per-step flags and losses on the device, read back in one transfer by :meth:`flush`."""

    _values: list[Tensor] = field(default_factory=list)  # (3,) float32: loss, loss ok, step ok
    _steps: list[PendingStep] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self._steps)

    def add(self, step: PendingStep, loss: Tensor, loss_ok: Tensor, ok: Tensor) -> Tensor:
        """Record one step; returns the loss for the progress log (NaN when skipped)."""
        value = torch.where(ok, loss.detach().float(), torch.full_like(loss.detach().float(),
                                                                       math.nan))
        self._values.append(torch.stack([value, loss_ok.float(), ok.float()]))
        self._steps.append(step)
        return value

    def flush(self) -> list[FlushedStep]:
        """The recorded steps, in order (one device-to-host transfer), and forget them."""
        if not self._steps:
            return []
        rows = torch.stack(self._values).tolist()  # the one transfer
        out = [FlushedStep(step, loss, bool(loss_ok), bool(ok))
               for step, (loss, loss_ok, ok) in zip(self._steps, rows, strict=True)]
        self._values, self._steps = [], []
        return out


def batch_ids(batch: Any) -> dict[str, Any]:
    """The id tensors of a batch (small; kept until the step's flags are read)."""
    if isinstance(batch, Mapping):
        return {k: batch[k] for k in ("image_ids", "question_ids") if k in batch}
    return {}


Describe = Callable[[Any], str]

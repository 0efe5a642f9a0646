"""Numeric precision of training: bf16 autocast on GPUs, TF32 for what stays float32.

Every trainer's config has ``precision`` (``auto``, ``fp32`` or ``bf16``):

* ``auto`` (the default): bf16 autocast on CUDA, plain float32 on the CPU (a CPU's bf16 matrix
  products are slower than float32 ones on most machines, and the CPU runs are the demo and
  the tests, whose numbers must not move);
* ``bf16``: bf16 autocast on any device (on the CPU too: what the tests compare against fp32);
* ``fp32``: no autocast and no TF32: bit-for-bit the arithmetic of earlier versions.

Under autocast the weights, the optimiser state and the gradients stay float32; matrix products
and convolutions run in bf16 (no loss scaling is needed: bf16 has float32's exponent range).
Losses, rewards and log-softmaxes are computed in float32 by the trainers (each casts its
logits with ``.float()`` before them and :func:`float32_region` turns autocast off around them).
With ``auto``/``bf16`` on CUDA the float32 work left (LSTM cells that autocast keeps in float32
on some builds, the optimiser) may use TF32 matrix units: ``torch.backends.cuda.matmul`` and
cuDNN's ``allow_tf32`` are switched on for the duration of :meth:`Precision.training` and
restored afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch

PrecisionName = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")


def check_precision(name: str, key: str) -> None:
    """Raise a ValueError naming the config ``key`` when ``name`` is not a known precision."""
    if name not in PRECISIONS:
        raise ValueError(f"{key}: {name!r} is not one of {list(PRECISIONS)} (auto = bf16 "
                         "autocast on CUDA, float32 on the CPU)")


@dataclass(frozen=True)
class Precision:
    """The precision a run resolved to on its device."""

    device_type: str  # "cuda", "cpu", ...
    dtype: torch.dtype | None  # the autocast dtype, None = plain float32
    tf32: bool  # float32 matrix products may use TF32 (CUDA only)

    @property
    def name(self) -> str:
        return "fp32" if self.dtype is None else "bf16"

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward's context: autocast to ``dtype``, or nothing."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        """TF32 on for float32 matrix products while the run trains (CUDA), restored after."""
        if not self.tf32:
            yield
            return
        matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn

    def describe(self) -> str:
        if self.dtype is None:
            return f"float32 on {self.device_type}"
        return (f"bf16 autocast on {self.device_type}"
                + (", TF32 for float32 matrix products" if self.tf32 else ""))


def resolve_precision(name: str, device: torch.device | str) -> Precision:
    """``auto``/``fp32``/``bf16`` on ``device`` -> what the run uses (see the module docstring)."""
    check_precision(name, "precision")
    device_type = torch.device(device).type
    if name == "fp32" or (name == "auto" and device_type != "cuda"):
        return Precision(device_type, None, False)
    return Precision(device_type, torch.bfloat16, device_type == "cuda")


def float32_region(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast off: losses and rewards in float32 whatever the forward ran in."""
    return torch.autocast(device_type, enabled=False)

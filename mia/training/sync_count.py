"""Count the places where code reads a tensor's value on the host: GPU synchronisations.

On CUDA every ``.item()``, ``bool(t)``, ``float(t)``, ``.tolist()``, ``.numpy()`` of a device
tensor, and every operation whose output size depends on the values (``nonzero``, boolean
indexing), waits for all queued kernels. ``torch.cuda.set_sync_debug_mode`` reports them, on a
GPU only; this counter finds the same calls on the CPU, where the tests run:

* a ``TorchDispatchMode`` sees ``aten._local_scalar_dense`` (what ``.item()``, ``bool`` and
  ``float`` call), the value-dependent-size operators and indexing with a boolean mask;
* ``Tensor.tolist``, ``Tensor.numpy`` (not dispatched) and ``Tensor.cpu`` (a no-op on the CPU,
  a device-to-host copy that waits on CUDA) are wrapped while counting.

Each read is attributed to the first stack frame outside torch, so a test can tell the loop's
flushes from a per-step read. Host data (the loaders' batches) is read on the host in a GPU run
too: code reads them through :func:`host_value`, whose reads of CPU tensors are not counted.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_TORCH_DIR = str(Path(torch.__file__).resolve().parent)
_THIS = str(Path(__file__).resolve())
#: Operators that read values on the host (their output's size depends on them).
_SYNCING_OPS = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2",
                "repeat_interleave.Tensor", "bincount")


@dataclass(frozen=True)
class SyncCall:
    """One host read: what, and the first frames outside torch (innermost first)."""

    what: str
    frames: tuple[tuple[str, str], ...]  # (file, function)
    via_torch: tuple[str, ...]  # torch files between the caller and the read

    @property
    def caller(self) -> tuple[str, str]:
        return self.frames[0] if self.frames else ("?", "?")

    def describe(self) -> str:
        file, func = self.caller
        return f"{self.what} in {Path(file).name}:{func}"


class SyncCounter(TorchDispatchMode):
    """``with SyncCounter() as c: ...`` then ``c.calls`` (every host read, in order)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[SyncCall] = []

    def _record(self, what: str, device: torch.device | None = None) -> None:
        stack = traceback.extract_stack()[:-1]
        if device is not None and device.type == "cpu" and any(
                f.name in ("host_value", "host_array") and str(Path(f.filename).resolve()) == _THIS
                for f in stack):
            return  # a value the pipeline keeps on the host in every run
        outside, inside = [], []
        for frame in reversed(stack):
            path = str(Path(frame.filename).resolve())
            if path == _THIS:
                continue
            if path.startswith(_TORCH_DIR):
                if not outside:
                    inside.append(path[len(_TORCH_DIR) + 1:])
                continue
            outside.append((path, frame.name))
        self.calls.append(SyncCall(what, tuple(outside[:8]), tuple(inside)))

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None
                           ) -> Any:
        name = str(func.overloadpacket.__name__)
        overload = f"{name}.{func._overloadname}"
        if name in _SYNCING_OPS or overload in _SYNCING_OPS:
            first = next((a for a in args if isinstance(a, torch.Tensor)), None)
            self._record(f"aten.{overload}", None if first is None else first.device)
        elif name in ("index", "index_put", "index_put_") and len(args) > 1 and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] or ()):
            self._record(f"aten.{overload} with a boolean mask", args[0].device)
        return func(*args, **(kwargs or {}))

    def __enter__(self) -> SyncCounter:
        self._patched = _patch_host_reads(self)
        self._patched.__enter__()
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)
        finally:
            self._patched.__exit__(*exc)


@contextmanager
def _patch_host_reads(counter: SyncCounter) -> Iterator[None]:
    originals = {name: getattr(torch.Tensor, name) for name in ("tolist", "numpy", "cpu")}

    def wrap(name: str, original: Any) -> Any:
        def read(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            counter._record(f"Tensor.{name}", self.device)
            return original(self, *args, **kwargs)
        return read

    try:
        for name, original in originals.items():
            setattr(torch.Tensor, name, wrap(name, original))
        yield
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def host_value(tensor: torch.Tensor) -> Any:
    """The value of a tensor the data pipeline keeps on the host in every run (caption lengths,
    ids): ``.item()`` of a scalar, ``.tolist()`` otherwise. Reading it is no device sync; the
    counter does not count these reads while the tensor is on the CPU (a device tensor read here
    still counts: on a GPU it IS a sync)."""
    return tensor.item() if tensor.dim() == 0 else tensor.tolist()



def host_array(tensor: torch.Tensor) -> Any:
    """``tensor`` as a numpy array: free for a host tensor (not counted), a device-to-host copy
    (counted: on CUDA it waits for the device) for a device one."""
    return tensor.detach().cpu().numpy()

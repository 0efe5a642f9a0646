"""One torch thread for tests that compare float sums with a subprocess or a recorded value (the
same sums in the same order), and for tiny models on a shared 2-core machine (faster)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one thread inside the block, the previous count restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)

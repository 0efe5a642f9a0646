"""How the per-token loops of decoding run: with a host check per token, without, or compiled.

Sampling (SCST), greedy decoding and beam search call ``decoder.step`` once per token in a Python
loop. On a GPU each call is a few dozen small kernels, and the loop used to ask the device after
every token whether all captions had ended (``bool(finished.all())``): a host synchronisation per
token, so the GPU idled while Python queued the next step. The modes (``decode_step`` in the SCST
and decoding configs):

* ``eager``: the loop as it always was: a check per token, stop as soon as every caption ended;
* ``fixed``: no check: all ``max_length`` steps run (finished rows emit ``<pad>``), so nothing
  waits for the device until the captions are read. Greedy and beam-search results are the same
  as ``eager``'s (a settled image can no longer change: scores only fall); sampling draws for
  the extra steps too, so its random stream, and so its samples, differ from ``eager``'s;
* ``compiled``: ``fixed`` with ``decoder.step`` compiled by ``torch.compile``; on CUDA without
  autograd (greedy baseline, beam search) as CUDA graphs (``mode="reduce-overhead"``): one
  replay per token instead of dozens of launches. With autograd (SCST sampling) inductor's
  fused kernels, without graphs. The first batches pay the compilation (seconds to a minute).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

STEP_MODES: tuple[str, ...] = ("eager", "fixed", "compiled")
#: ``torch.compile`` backend; None = inductor. Tests on the CPU set "aot_eager" (no C++ build).
BACKEND: str | None = None

Step = Callable[[Tensor, Any, Any], tuple[Tensor, Any]]
_compiled: weakref.WeakKeyDictionary[nn.Module, dict[tuple[bool, str | None], Step]] = (
    weakref.WeakKeyDictionary())


def check_step_mode(mode: str, key: str) -> None:
    if mode not in STEP_MODES:
        raise ValueError(f"{key}: {mode!r} is not one of {list(STEP_MODES)}")


def early_exit(mode: str) -> bool:
    """Whether the loop checks on the host after each token that some caption is unfinished."""
    check_step_mode(mode, "decode_step")
    return mode == "eager"


def decoder_step(decoder: nn.Module, mode: str) -> Step:
    """``decoder.step``, compiled when ``mode`` is ``compiled`` (cached per decoder)."""
    check_step_mode(mode, "decode_step")
    if mode != "compiled":
        return decoder.step
    key = (torch.is_grad_enabled(), BACKEND)
    per_decoder = _compiled.setdefault(decoder, {})
    if key not in per_decoder:
        per_decoder[key] = _compile(decoder, grad=key[0])
    return per_decoder[key]


def _compile(decoder: nn.Module, grad: bool) -> Step:
    device = next(decoder.parameters()).device
    graphs = device.type == "cuda" and not grad and BACKEND is None
    options: dict[str, Any] = {}  # dynamic=None: a growing cache (Transformer) marks dims dynamic
    if BACKEND is not None:
        options["backend"] = BACKEND
    elif graphs:
        options["mode"] = "reduce-overhead"
    compiled = torch.compile(decoder.step, **options)
    if not graphs:
        return compiled

    def step(words: Tensor, state: Any, ctx: Any) -> tuple[Tensor, Any]:
        # A CUDA graph writes every replay's outputs to the same buffers: copy them out before
        # the next token replays it (the loop keeps the logits and feeds the state back).
        torch.compiler.cudagraph_mark_step_begin()
        logits, new_state = compiled(words, state, ctx)
        return logits.clone(), tuple(s.clone() for s in new_state)

    return step

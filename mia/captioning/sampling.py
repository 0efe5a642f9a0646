"""Roll a captioner's decoder forward one token at a time: sampling (SCST) and greedy decoding.

Any decoder with the beam-search interface works (``prepare``, ``init_state``, ``step``); the
image is encoded ONCE and its context repeated ``k`` times, image-major (rows ``i*k .. i*k+k-1``
belong to image ``i``), as the reference repeats its prepared features for ``sample_n``.

Conventions (ruotianluo/self-critical.pytorch ``AttModel._sample``, in this project's vocabulary):

* ``<pad>`` and ``<bos>`` are never a next word: their logits are removed before the softmax (the
  reference's shared ``0`` index is ``<eos>``, which stays a word);
* a row that has emitted ``<eos>`` continues with ``<pad>``, at log-probability 0 and mask False;
  ``<eos>`` itself is kept, with its log-probability and mask True;
* at most ``max_length`` tokens, ``<eos>`` included; a row that reaches the limit has no ``<eos>``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mia.captioning.step_capture import decoder_step, early_exit
from mia.dtypes import at_least_float32

# Caption vocabulary layout fixed by docs/CONTRACTS.md.
PAD, BOS, EOS, UNK = 0, 1, 2, 3


def next_word_log_probs(logits: Tensor) -> Tensor:
    """Log-softmax over the words that may follow, in at least float32 (float64 stays float64):
    ``<pad>``/``<bos>`` get -inf."""
    banned = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    banned[[PAD, BOS]] = True
    return at_least_float32(logits).masked_fill(banned, float("-inf")).log_softmax(dim=-1)


@dataclass
class Rollout:
    """``k`` captions per image, rows image-major.

    ``tokens`` (B*k, max_length) long, ``<pad>`` after ``<eos>``; ``log_probs`` (B*k, max_length)
    float32 (float64 for a float64 model), the log-probability of each chosen token (0 where ``mask`` is False; carries the
    graph when sampled with grad); ``mask`` (B*k, max_length) bool, True up to and including the
    first ``<eos>``.
    """

    tokens: Tensor
    log_probs: Tensor
    mask: Tensor

    @property
    def lengths(self) -> Tensor:
        """Tokens per row, ``<eos>`` included (B*k,)."""
        return self.mask.sum(dim=1)


Chooser = Callable[[Tensor], Tensor]  # log-probs (N, V) -> chosen ids (N,)


def rollout(model: nn.Module, batch: dict[str, Tensor], k: int, max_length: int,
            choose: Chooser, step_mode: str = "eager") -> Rollout:
    """Decode ``k`` rows per image, picking each next word with ``choose``.

    Gradients flow through ``log_probs`` unless the caller runs this under ``torch.no_grad()``.
    ``step_mode`` (:mod:`mia.captioning.step_capture`): ``eager`` stops once every row ended
    (a host check per token); ``fixed``/``compiled`` run all ``max_length`` steps unchecked.
    """
    if k < 1 or max_length < 1:
        raise ValueError(f"rollout needs k >= 1 and max_length >= 1, got k={k}, "
                         f"max_length={max_length}")
    decoder = model.decoder
    step, check = decoder_step(decoder, step_mode), early_exit(step_mode)
    ctx = decoder.prepare(model.encode(batch))
    if k > 1:
        ctx = ctx.repeat_interleave(k)
    state = decoder.init_state(ctx)
    rows = ctx.memory.shape[0]
    device = ctx.memory.device
    words = torch.full((rows,), BOS, dtype=torch.long, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    tokens, log_probs, masks = [], [], []
    for _ in range(max_length):
        logits, state = step(words, state, ctx)
        logp = next_word_log_probs(logits)  # (N, V)
        chosen = choose(logp.detach())
        alive = ~finished
        words = torch.where(alive, chosen, torch.full_like(chosen, PAD))
        picked = logp.gather(1, chosen.unsqueeze(1)).squeeze(1)
        log_probs.append(torch.where(alive, picked, torch.zeros_like(picked)))
        tokens.append(words)
        masks.append(alive)
        finished = finished | (words == EOS)
        if check and bool(finished.all()):
            break
    pad = max_length - len(tokens)
    return Rollout(F.pad(torch.stack(tokens, 1), (0, pad), value=PAD),
                   F.pad(torch.stack(log_probs, 1), (0, pad), value=0.0),
                   F.pad(torch.stack(masks, 1), (0, pad), value=False))


def multinomial_chooser(temperature: float = 1.0,
                        generator: torch.Generator | None = None) -> Chooser:
    """Sample from softmax(log p / temperature). The loss still uses log p (temperature 1), as
    the reference does (its ``sample_next_word`` only tempers what it samples from)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")

    def choose(logp: Tensor) -> Tensor:
        probs = (logp / temperature).softmax(dim=-1) if temperature != 1.0 else logp.exp()
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    return choose


def greedy_chooser(logp: Tensor) -> Tensor:
    return logp.argmax(dim=-1)


def sample_captions(model: nn.Module, batch: dict[str, Tensor], k: int, max_length: int,
                    temperature: float = 1.0,
                    generator: torch.Generator | None = None,
                    step_mode: str = "eager") -> Rollout:
    """``k`` multinomial samples per image with their per-token log-probabilities (with grad).

    Runs in whatever mode the model is in (SCST samples in train mode, dropout on, as the
    reference does).
    """
    return rollout(model, batch, k, max_length, multinomial_chooser(temperature, generator),
                   step_mode)


def greedy_captions(model: nn.Module, batch: dict[str, Tensor], max_length: int,
                    step_mode: str = "eager") -> Rollout:
    """Greedy decoding in eval mode without a graph; the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return rollout(model, batch, 1, max_length, greedy_chooser, step_mode)
    finally:
        model.train(was_training)

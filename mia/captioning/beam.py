"""Greedy decoding and batched beam search over any captioner's ``decoder.step``.

Beam search keeps ``K`` OPEN hypotheses per image as a ``(B, K)`` grid and loops only over time
steps; a hypothesis that ends is set aside and never competes for a beam again. At each step the
``K x V`` extensions of an image's open beams are ranked together (one ``topk`` of ``2K``):

* an ``<eos>`` extension ranked among the first ``K`` is a finished hypothesis; it replaces the
  image's best finished one if its score (the sum of its tokens' log-probabilities, ``<eos>``
  included, no length penalty) is higher;
* the ``K`` best extensions that are not ``<eos>`` become the open beams (there are always ``K``
  of them: at most one ``<eos>`` extension per beam among the ``2K``).

Scores only decrease as words are added, so an image whose best finished score is at least its
best open score is settled; decoding stops when every image is. At ``max_length`` steps the open
beams are cut, and the best of them competes with the finished ones on its score so far.
``<pad>`` and ``<bos>`` are never generated. With ``K = 1`` this is exactly greedy decoding.

Why not the simpler grid where a finished beam stays in its slot and competes with the open ones
(this project's first version, and close to the released ``Models/Beam.py``, which even keeps
extending finished beams and stops when the top beam ends): there ``K`` open extensions that
score better than a finished hypothesis push it out of the grid, and if they later end worse, the
better finished caption is lost. ``tests/test_captioning_beam.py`` has a model where that happens.

``max_length`` counts decoding steps, ``<eos>`` included: the released decoder runs
``range(1, 20)``, 19 steps (:data:`RELEASED_MAX_STEPS`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mia.captioning.step_capture import decoder_step, early_exit
from mia.dtypes import at_least_float32

# Caption vocabulary layout fixed by docs/CONTRACTS.md.
PAD, BOS, EOS, UNK = 0, 1, 2, 3
#: Decoding steps of the released ``Models/Generator.py`` (``range(1, max_caption_length=20)``).
RELEASED_MAX_STEPS = 19


@dataclass
class Decoded:
    """Best sequence per image: ``tokens`` (B, max_length), PAD after ``<eos>``; ``scores`` (B,)."""

    tokens: Tensor
    scores: Tensor


def _log_probs(logits: Tensor) -> Tensor:
    """Log-softmax with ``<pad>`` and ``<bos>`` excluded: they are never a next word."""
    logits = at_least_float32(logits).clone()
    logits[..., PAD] = float("-inf")
    logits[..., BOS] = float("-inf")
    return logits.log_softmax(dim=-1)


def _pad_to(tokens: Tensor, length: int) -> Tensor:
    return torch.nn.functional.pad(tokens, (0, length - tokens.shape[-1]), value=PAD)


@torch.no_grad()
def greedy_decode(model: nn.Module, batch: dict[str, Tensor], max_length: int,
                  step_mode: str = "eager") -> Decoded:
    """Pick the most probable word at every step (the reference beam search must match at K=1).
    ``step_mode``: :mod:`mia.captioning.step_capture` (the same captions in every mode)."""
    decoder = model.decoder
    step, check = decoder_step(decoder, step_mode), early_exit(step_mode)
    ctx = decoder.prepare(model.encode(batch))
    state = decoder.init_state(ctx)
    b = ctx.memory.shape[0]
    words = torch.full((b,), BOS, dtype=torch.long, device=ctx.memory.device)
    finished = torch.zeros(b, dtype=torch.bool, device=words.device)
    scores = torch.zeros(b, device=words.device)
    out = []
    for _ in range(max_length):
        logits, state = step(words, state, ctx)
        best_lp, best = _log_probs(logits).max(dim=-1)
        words = torch.where(finished, torch.full_like(best, PAD), best)
        scores = scores + torch.where(finished, torch.zeros_like(best_lp), best_lp)
        out.append(words)
        finished = finished | (words == EOS)
        if check and bool(finished.all()):
            break
    return Decoded(_pad_to(torch.stack(out, dim=1), max_length), scores)


@torch.no_grad()
def beam_search(model: nn.Module, batch: dict[str, Tensor], beam_size: int,
                max_length: int, step_mode: str = "eager") -> Decoded:
    """Batched beam search; returns the highest-scoring hypothesis of each image.

    ``step_mode`` (:mod:`mia.captioning.step_capture`): ``eager`` asks the device twice per token
    (any better finished caption? every image settled?); ``fixed``/``compiled`` ask nothing and
    run all ``max_length`` steps, with the same result (a settled image cannot change)."""
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    decoder = model.decoder
    step, check = decoder_step(decoder, step_mode), early_exit(step_mode)
    ctx = decoder.prepare(model.encode(batch))
    b, k = ctx.memory.shape[0], beam_size
    ctx = ctx.repeat_interleave(k)  # (B*K, ...), image-major
    state = decoder.init_state(ctx)
    device = ctx.memory.device
    words = torch.full((b * k,), BOS, dtype=torch.long, device=device)
    # Only beam 0 is live at the start; the others would duplicate it.
    scores = torch.full((b, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    tokens = torch.zeros(b, k, 0, dtype=torch.long, device=device)
    best_score = torch.full((b,), float("-inf"), device=device)
    best_tokens = torch.full((b, max_length), PAD, dtype=torch.long, device=device)
    image_offset = torch.arange(b, device=device).unsqueeze(1) * k  # (B, 1)
    rank = torch.arange(2 * k, device=device)
    for t in range(max_length):
        logits, state = step(words, state, ctx)
        logp = _log_probs(logits).view(b, k, -1)  # (B, K, V)
        vocab = logp.shape[-1]
        cand, flat = (scores.unsqueeze(-1) + logp).view(b, k * vocab).topk(
            min(2 * k, k * vocab), dim=-1)  # (B, 2K), best first
        origin, word = flat // vocab, flat % vocab
        is_eos = word == EOS
        # Finished: <eos> extensions ranked among the first K; keep each image's best.
        finished = torch.where(is_eos & (rank[:cand.shape[1]] < k), cand,
                               torch.full_like(cand, float("-inf")))
        top_finished, which = finished.max(dim=-1)  # (B,)
        better = top_finished > best_score
        if not check or bool(better.any()):
            src = origin.gather(1, which[:, None]).squeeze(1)  # (B,) beam it extends
            ended = torch.cat([tokens[torch.arange(b, device=device), src],
                               torch.full((b, 1), EOS, dtype=torch.long, device=device)], -1)
            best_tokens = torch.where(better[:, None], _pad_to(ended, max_length), best_tokens)
            best_score = torch.where(better, top_finished, best_score)
        # Open: the first K candidates that are not <eos> (stable: rank order kept).
        keep = torch.where(is_eos, rank[:cand.shape[1]] + 2 * k, rank[:cand.shape[1]])
        keep = keep.argsort(dim=-1)[:, :k]  # (B, K) indices into the 2K candidates
        scores = cand.gather(1, keep)
        origin, word = origin.gather(1, keep), word.gather(1, keep)
        rows = (image_offset + origin).view(-1)
        state = tuple(s.index_select(0, rows) for s in state)
        tokens = torch.cat([tokens.gather(1, origin.unsqueeze(-1).expand(-1, -1, t)),
                            word.unsqueeze(-1)], dim=-1)
        words = word.view(-1)
        if check and bool((best_score >= scores.max(dim=-1).values).all()):
            break  # no open beam can still beat a finished caption of its image
    # Captions cut at max_length compete on their score so far.
    open_best, which = scores.max(dim=-1)
    cut = open_best > best_score
    index = torch.arange(b, device=device)
    best_tokens = torch.where(cut[:, None], _pad_to(tokens[index, which], max_length), best_tokens)
    return Decoded(best_tokens, torch.where(cut, open_best, best_score))


def decode(model: nn.Module, batch: dict[str, Tensor], beam_size: int,
           max_length: int, step_mode: str = "eager") -> Decoded:
    """Greedy for ``beam_size == 1`` (cheaper), beam search otherwise; same results either way."""
    if beam_size == 1:
        return greedy_decode(model, batch, max_length, step_mode)
    return beam_search(model, batch, beam_size, max_length, step_mode)


@torch.no_grad()
def sequence_log_prob(model: nn.Module, batch: dict[str, Tensor], tokens: Tensor) -> Tensor:
    """Teacher-forced log-probability (B,) of ``tokens`` (B, T) (PAD after ``<eos>`` ignored),
    under the same distribution the decoders search (``<pad>``/``<bos>`` excluded)."""
    inputs = torch.cat([torch.full_like(tokens[:, :1], BOS), tokens[:, :-1]], dim=1)
    logp = _log_probs(model.decoder(model.encode(batch), inputs))
    picked = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked.masked_fill(tokens == PAD, 0.0).sum(dim=1)

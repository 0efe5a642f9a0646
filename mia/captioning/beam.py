"""Greedy decoding and batched beam search over any captioner's ``decoder.step``.

Beam search keeps ``K`` hypotheses per image as a ``(B, K)`` grid and loops only over time steps:
at each step the ``K x V`` extensions of each image are ranked together with one ``topk``, and the
decoder's state is gathered from the beams they extend. A beam that has emitted ``<eos>`` is
frozen: its only continuation is ``<pad>`` at log-probability 0, so its score (the sum of its
tokens' log-probabilities, ``<eos>`` included, no length penalty) never changes and it competes
with the open beams on that score. ``<pad>`` and ``<bos>`` are never generated. With ``K = 1``
this is exactly greedy decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

# Caption vocabulary layout fixed by docs/CONTRACTS.md.
PAD, BOS, EOS, UNK = 0, 1, 2, 3


@dataclass
class Decoded:
    """Best sequence per image: ``tokens`` (B, max_length), PAD after ``<eos>``; ``scores`` (B,)."""

    tokens: Tensor
    scores: Tensor


def _log_probs(logits: Tensor) -> Tensor:
    """Log-softmax with ``<pad>`` and ``<bos>`` excluded: they are never a next word."""
    logits = logits.float().clone()
    logits[..., PAD] = float("-inf")
    logits[..., BOS] = float("-inf")
    return logits.log_softmax(dim=-1)


def _pad_to(tokens: Tensor, length: int) -> Tensor:
    return torch.nn.functional.pad(tokens, (0, length - tokens.shape[-1]), value=PAD)


@torch.no_grad()
def greedy_decode(model: nn.Module, batch: dict[str, Tensor], max_length: int) -> Decoded:
    """Pick the most probable word at every step (the reference beam search must match at K=1)."""
    decoder = model.decoder
    ctx = decoder.prepare(model.encode(batch))
    state = decoder.init_state(ctx)
    b = ctx.memory.shape[0]
    words = torch.full((b,), BOS, dtype=torch.long, device=ctx.memory.device)
    finished = torch.zeros(b, dtype=torch.bool, device=words.device)
    scores = torch.zeros(b, device=words.device)
    out = []
    for _ in range(max_length):
        logits, state = decoder.step(words, state, ctx)
        best_lp, best = _log_probs(logits).max(dim=-1)
        words = torch.where(finished, torch.full_like(best, PAD), best)
        scores = scores + torch.where(finished, torch.zeros_like(best_lp), best_lp)
        out.append(words)
        finished = finished | (words == EOS)
        if bool(finished.all()):
            break
    return Decoded(_pad_to(torch.stack(out, dim=1), max_length), scores)


@torch.no_grad()
def beam_search(model: nn.Module, batch: dict[str, Tensor], beam_size: int,
                max_length: int) -> Decoded:
    """Batched beam search; returns the highest-scoring hypothesis of each image."""
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    decoder = model.decoder
    ctx = decoder.prepare(model.encode(batch))
    b, k = ctx.memory.shape[0], beam_size
    ctx = ctx.repeat_interleave(k)  # (B*K, ...), image-major
    state = decoder.init_state(ctx)
    device = ctx.memory.device
    words = torch.full((b * k,), BOS, dtype=torch.long, device=device)
    # Only beam 0 is live at the start; the others would duplicate it.
    scores = torch.full((b, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    finished = torch.zeros(b, k, dtype=torch.bool, device=device)
    tokens = torch.zeros(b, k, 0, dtype=torch.long, device=device)
    image_offset = torch.arange(b, device=device).unsqueeze(1) * k  # (B, 1)
    for t in range(max_length):
        logits, state = decoder.step(words, state, ctx)
        logp = _log_probs(logits).view(b, k, -1)  # (B, K, V)
        vocab = logp.shape[-1]
        frozen = torch.full((vocab,), float("-inf"), device=device)
        frozen[PAD] = 0.0
        logp = torch.where(finished.unsqueeze(-1), frozen, logp)
        scores, flat = (scores.unsqueeze(-1) + logp).view(b, k * vocab).topk(k, dim=-1)
        origin, word = flat // vocab, flat % vocab  # (B, K) each
        rows = (image_offset + origin).view(-1)
        state = tuple(s.index_select(0, rows) for s in state)
        tokens = torch.cat([tokens.gather(1, origin.unsqueeze(-1).expand(-1, -1, t)),
                            word.unsqueeze(-1)], dim=-1)
        finished = finished.gather(1, origin) | (word == EOS)
        words = word.view(-1)
        if bool(finished.all()):
            break
    best = scores.argmax(dim=-1)
    index = torch.arange(b, device=device)
    return Decoded(_pad_to(tokens[index, best], max_length), scores[index, best])


def decode(model: nn.Module, batch: dict[str, Tensor], beam_size: int,
           max_length: int) -> Decoded:
    """Greedy for ``beam_size == 1`` (cheaper), beam search otherwise; same results either way."""
    if beam_size == 1:
        return greedy_decode(model, batch, max_length)
    return beam_search(model, batch, beam_size, max_length)


@torch.no_grad()
def sequence_log_prob(model: nn.Module, batch: dict[str, Tensor], tokens: Tensor) -> Tensor:
    """Teacher-forced log-probability (B,) of ``tokens`` (B, T) (PAD after ``<eos>`` ignored),
    under the same distribution the decoders search (``<pad>``/``<bos>`` excluded)."""
    inputs = torch.cat([torch.full_like(tokens[:, :1], BOS), tokens[:, :-1]], dim=1)
    logp = _log_probs(model.decoder(model.encode(batch), inputs))
    picked = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked.masked_fill(tokens == PAD, 0.0).sum(dim=1)

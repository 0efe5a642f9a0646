"""The attention LSTM decoder of Visual / Concept / Visual Regional Attention (paper section 3.1).

At every decoding step the LSTM's hidden state attends (additive soft attention) over the memory
the encoder produced: grid features for Visual Attention, embedded concepts for Concept Attention,
the 36 region features for Visual Regional Attention, or MIA's semantic-grounded representations
for their ``w/ MIA`` versions. Two wirings are available:

* ``released`` (default; the authors' ``Models/Main.py``, after Lu et al. 2017):
  x_t = E w_t + p; h_t = LSTM(x_t, h_{t-1}); c_t = Att(M, h_t); logits = W_o dropout(c_t + h_t).
  The pooled image vector p is v_a = W_a dropout(mean V) for the Visual models and t_a = mean T
  (no linear, no dropout) for the Concept models (``concept_pooling: linear`` gives the Concept
  models a v_a-like map instead). The LSTM does not see c_t, so teacher forcing runs the LSTM over
  the whole sequence at once.
* ``show_attend_tell`` (Xu et al. 2015): h_0, c_0 = tanh(W mean(M)); c_t = Att(M, h_{t-1});
  h_t = LSTM([E w_t; c_t], h_{t-1}); logits = W_o dropout(h_t).

The released attention (``AttentionBlock``): z = w^T dropout(tanh(W_m dropout(M) + W_h
dropout(h_t))), no biases, hidden size 49, alpha = softmax(z), c_t = alpha M (M itself, not its
dropped-out copy). Padded memory positions (mask False) never receive attention and do not enter
the means; the released code has no padding (49 cells, 49 concepts), so this changes nothing there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mia.captioning.config import CaptionerConfig
from mia.captioning.encoder import EncodedImage

State = tuple[Tensor, Tensor]  # LSTM (h, c), each (B, H)


def masked_mean(memory: Tensor, mask: Tensor) -> Tensor:
    """Mean over the real positions: (B, n, d), (B, n) -> (B, d)."""
    weights = mask.to(memory.dtype).unsqueeze(-1)
    return (memory * weights).sum(1) / weights.sum(1).clamp(min=1.0)


@dataclass
class DecoderContext:
    """Per-image tensors every step reuses; beam search repeats them once per beam.

    ``keys`` (B, n, a): attention keys W_m dropout(M), computed once per image (as the released
    code computes them once per caption); ``pooled`` (B, d): masked mean of the memory; ``addend``
    (B, e): what every word input gets added; ``prime`` (B, e): the Condition models' first LSTM
    input. Fields a decoder does not use stay None.
    """

    memory: Tensor  # (B, n, d)
    mask: Tensor  # (B, n) bool
    keys: Tensor | None = None
    pooled: Tensor | None = None
    addend: Tensor | None = None
    prime: Tensor | None = None

    def repeat_interleave(self, k: int) -> DecoderContext:
        return DecoderContext(**{
            f.name: None if getattr(self, f.name) is None
            else getattr(self, f.name).repeat_interleave(k, dim=0)
            for f in dataclasses.fields(self)})


class PooledImage(nn.Module):
    """The image vector a decoder adds to its word inputs: (B, n, d), (B, n) -> (B, e).

    ``linear=True``: W dropout(mean M) + b (the released v_a, ``affine_va``); ``linear=False``:
    mean M itself (the released t_a), which needs d == e.
    """

    def __init__(self, d_model: int, embed_dim: int, dropout: float, linear: bool) -> None:
        super().__init__()
        if not linear and d_model != embed_dim:
            raise ValueError(
                f"captioner: concept_pooling 'mean' adds mean(T) (d_model={d_model}) to the word "
                f"embedding (embed_dim={embed_dim}) without a linear map, as the released code "
                "does; make them equal or set concept_pooling: linear")
        self.linear = nn.Linear(d_model, embed_dim) if linear else None
        self.dropout = nn.Dropout(dropout) if linear else None

    def forward(self, memory: Tensor, mask: Tensor) -> Tensor:
        pooled = masked_mean(memory, mask)
        if self.linear is None:
            return pooled
        return self.linear(self.dropout(pooled))  # type: ignore[misc]

    def released_init_(self) -> None:
        """``affine_va``: Kaiming-uniform (fan in) weights, zero bias."""
        if self.linear is not None:
            nn.init.kaiming_uniform_(self.linear.weight, mode="fan_in")
            nn.init.zeros_(self.linear.bias)


def pooled_input(cfg: CaptionerConfig, modality: str) -> PooledImage:
    """v_a for ``visual`` (always linear), t_a for ``concepts`` (per ``cfg.concept_pooling``)."""
    linear = modality == "visual" or cfg.concept_pooling == "linear"
    return PooledImage(cfg.d_model, cfg.embed_dim, cfg.dropout, linear)


class AdditiveAttention(nn.Module):
    """alpha = softmax(w^T dropout(tanh(W_m dropout(M) + W_h dropout(h)))) over real positions;
    returns sum_j alpha_j M_j. No biases, as in the released ``AttentionBlock``."""

    def __init__(self, d_model: int, hidden: int, attention_dim: int, dropout: float) -> None:
        super().__init__()
        self.w_memory = nn.Linear(d_model, attention_dim, bias=False)
        self.w_hidden = nn.Linear(hidden, attention_dim, bias=False)
        self.w_score = nn.Linear(attention_dim, 1, bias=False)
        self.dropout = nn.Dropout(dropout)

    def keys(self, memory: Tensor) -> Tensor:
        return self.w_memory(self.dropout(memory))

    def forward(self, ctx: DecoderContext, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """``hidden`` (B, H) or (B, T, H) -> context like ``hidden`` with d, and the weights."""
        single = hidden.dim() == 2
        h = hidden.unsqueeze(1) if single else hidden  # (B, T, H)
        keys = ctx.keys if ctx.keys is not None else self.keys(ctx.memory)
        scores = self.w_score(self.dropout(torch.tanh(
            keys.unsqueeze(1) + self.w_hidden(self.dropout(h)).unsqueeze(2)))).squeeze(-1)
        # The most negative finite float, not -inf: a row with no real position at all (an image
        # without concepts) then attends uniformly instead of producing NaN.
        scores = scores.masked_fill(~ctx.mask.unsqueeze(1), torch.finfo(scores.dtype).min)
        alpha = scores.softmax(dim=-1)
        context = alpha @ ctx.memory  # (B, T, d)
        return (context.squeeze(1), alpha.squeeze(1)) if single else (context, alpha)

    def released_init_(self) -> None:
        for layer in (self.w_memory, self.w_hidden, self.w_score):
            nn.init.xavier_uniform_(layer.weight)


def run_lstm(lstm: nn.LSTM, x: Tensor, state: State) -> tuple[Tensor, State]:
    """``x`` (B, T, e) from batch-first state (h, c) (B, H) each -> outputs (B, T, H), state."""
    out, (h, c) = lstm(x, (state[0].unsqueeze(0).contiguous(), state[1].unsqueeze(0).contiguous()))
    return out, (h.squeeze(0), c.squeeze(0))


def released_output_init_(output: nn.Linear) -> None:
    """The released word classifier ``mlp``: Kaiming-normal (fan in) weights, zero bias."""
    nn.init.kaiming_normal_(output.weight, mode="fan_in")
    nn.init.zeros_(output.bias)


class AttentionDecoder(nn.Module):
    """LSTM decoder with soft attention over the encoder's memory; see the module docstring.

    ``source`` says which modality the memory is (``visual`` or ``concepts``): it decides how the
    pooled image vector added to the word inputs is made.
    """

    def __init__(self, cfg: CaptionerConfig, vocab_size: int, source: str = "visual") -> None:
        super().__init__()
        if source not in ("visual", "concepts"):
            raise ValueError(f"source must be 'visual' or 'concepts', got {source!r}")
        self.style = cfg.decoder_style
        d, e = cfg.d_model, cfg.embed_dim
        self.embedding = nn.Embedding(vocab_size, e, padding_idx=0)
        self.attention = AdditiveAttention(d, d, cfg.attention_dim, cfg.dropout)
        self.dropout = nn.Dropout(cfg.dropout)
        if self.style == "released":
            self.pool = pooled_input(cfg, source)
            self.lstm = nn.LSTM(e, d, batch_first=True)
        else:
            self.init_h = nn.Linear(d, d)
            self.init_c = nn.Linear(d, d)
            self.lstm = nn.LSTM(e + d, d, batch_first=True)
        self.output = nn.Linear(d, vocab_size)

    def released_init_(self) -> None:
        self.attention.released_init_()
        released_output_init_(self.output)
        if self.style == "released":
            self.pool.released_init_()

    def prepare(self, enc: EncodedImage) -> DecoderContext:
        pooled = masked_mean(enc.memory, enc.mask)
        # The pooled input is made once per image, one dropout mask for every step (released).
        addend = self.pool(enc.memory, enc.mask) if self.style == "released" else None
        return DecoderContext(enc.memory, enc.mask, self.attention.keys(enc.memory), pooled,
                              addend)

    def init_state(self, ctx: DecoderContext) -> State:
        b, d = ctx.pooled.shape  # type: ignore[union-attr]
        if self.style == "released":
            zeros = ctx.memory.new_zeros(b, self.lstm.hidden_size)
            return zeros, zeros
        return torch.tanh(self.init_h(ctx.pooled)), torch.tanh(self.init_c(ctx.pooled))

    def step(self, words: Tensor, state: State, ctx: DecoderContext) -> tuple[Tensor, State]:
        """One decoding step: previous words (B,) -> next-word logits (B, V) and the new state."""
        emb = self.embedding(words)
        if self.style == "released":
            out, state = run_lstm(self.lstm, (emb + ctx.addend).unsqueeze(1), state)
            h = out.squeeze(1)
            context, _ = self.attention(ctx, h)
            return self.output(self.dropout(context + h)), state
        context, _ = self.attention(ctx, state[0])
        out, state = run_lstm(self.lstm, torch.cat([emb, context], -1).unsqueeze(1), state)
        return self.output(self.dropout(out.squeeze(1))), state

    def forward(self, enc: EncodedImage, inputs: Tensor) -> Tensor:
        """Teacher forcing: input words (B, T) (``<bos> w_1 ..``) -> logits (B, T, V)."""
        ctx = self.prepare(enc)
        state = self.init_state(ctx)
        if self.style == "released":
            x = self.embedding(inputs) + ctx.addend.unsqueeze(1)  # type: ignore[union-attr]
            hiddens, _ = run_lstm(self.lstm, x, state)  # (B, T, d), one call for all steps
            context, _ = self.attention(ctx, hiddens)
            return self.output(self.dropout(context + hiddens))
        logits = []
        for t in range(inputs.shape[1]):
            step_logits, state = self.step(inputs[:, t], state, ctx)
            logits.append(step_logits)
        return torch.stack(logits, dim=1)

"""The attention LSTM decoder of the Visual / Concept Attention baselines (paper section 3.1).

At every decoding step the LSTM's hidden state attends (additive soft attention) over the memory
the encoder produced: grid features for Visual Attention, embedded concepts for Concept Attention,
or MIA's semantic-grounded representations for their ``w/ MIA`` versions. The mean of the memory
conditions every step. Two wirings are available:

* ``released`` (default; the authors' code, after Lu et al. 2017): x_t = E w_t + W_a mean(M);
  h_t = LSTM(x_t, h_{t-1}); c_t = Att(M, h_t); logits = W_o dropout(c_t + h_t). The LSTM does not
  see c_t, so teacher forcing runs the LSTM over the whole sequence at once.
* ``show_attend_tell`` (Xu et al. 2015): h_0, c_0 = tanh(W mean(M)); c_t = Att(M, h_{t-1});
  h_t = LSTM([E w_t; c_t], h_{t-1}); logits = W_o dropout(h_t).

Padded memory positions (mask False) never receive attention and do not enter the mean.
"""

from __future__ import annotations

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
    """Per-image tensors every step reuses; beam search repeats them once per beam."""

    memory: Tensor  # (B, n, d)
    mask: Tensor  # (B, n) bool
    keys: Tensor  # (B, n, a) attention keys W_m M, computed once
    pooled: Tensor  # (B, d) masked mean of the memory

    def repeat_interleave(self, k: int) -> DecoderContext:
        return DecoderContext(*(t.repeat_interleave(k, dim=0) for t in
                                (self.memory, self.mask, self.keys, self.pooled)))


class AdditiveAttention(nn.Module):
    """alpha = softmax(w^T tanh(W_m M + W_h h)) over real positions; returns sum_j alpha_j M_j."""

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
        scores = self.w_score(self.dropout(torch.tanh(
            ctx.keys.unsqueeze(1) + self.w_hidden(self.dropout(h)).unsqueeze(2)))).squeeze(-1)
        # The most negative finite float, not -inf: a row with no real position at all (an image
        # without concepts) then attends uniformly instead of producing NaN.
        scores = scores.masked_fill(~ctx.mask.unsqueeze(1), torch.finfo(scores.dtype).min)
        alpha = scores.softmax(dim=-1)
        context = alpha @ ctx.memory  # (B, T, d)
        return (context.squeeze(1), alpha.squeeze(1)) if single else (context, alpha)


class AttentionDecoder(nn.Module):
    """LSTM decoder with soft attention over the encoder's memory; see the module docstring."""

    def __init__(self, cfg: CaptionerConfig, vocab_size: int) -> None:
        super().__init__()
        self.style = cfg.decoder_style
        d, e = cfg.d_model, cfg.embed_dim
        self.embedding = nn.Embedding(vocab_size, e, padding_idx=0)
        self.attention = AdditiveAttention(d, d, cfg.attention_dim, cfg.dropout)
        self.dropout = nn.Dropout(cfg.dropout)
        if self.style == "released":
            self.condition = nn.Linear(d, e)
            self.lstm = nn.LSTM(e, d, batch_first=True)
        else:
            self.init_h = nn.Linear(d, d)
            self.init_c = nn.Linear(d, d)
            self.lstm = nn.LSTM(e + d, d, batch_first=True)
        self.output = nn.Linear(d, vocab_size)

    def prepare(self, enc: EncodedImage) -> DecoderContext:
        pooled = masked_mean(enc.memory, enc.mask)
        return DecoderContext(enc.memory, enc.mask, self.attention.keys(enc.memory), pooled)

    def init_state(self, ctx: DecoderContext) -> State:
        b, d = ctx.pooled.shape
        if self.style == "released":
            zeros = ctx.pooled.new_zeros(b, d)
            return zeros, zeros
        return torch.tanh(self.init_h(ctx.pooled)), torch.tanh(self.init_c(ctx.pooled))

    def _run_lstm(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        out, (h, c) = self.lstm(x, (state[0].unsqueeze(0).contiguous(),
                                    state[1].unsqueeze(0).contiguous()))
        return out, (h.squeeze(0), c.squeeze(0))

    def step(self, words: Tensor, state: State, ctx: DecoderContext) -> tuple[Tensor, State]:
        """One decoding step: previous words (B,) -> next-word logits (B, V) and the new state."""
        emb = self.embedding(words)
        if self.style == "released":
            x = emb + self.condition(self.dropout(ctx.pooled))
            out, state = self._run_lstm(x.unsqueeze(1), state)
            h = out.squeeze(1)
            context, _ = self.attention(ctx, h)
            return self.output(self.dropout(context + h)), state
        context, _ = self.attention(ctx, state[0])
        out, state = self._run_lstm(torch.cat([emb, context], -1).unsqueeze(1), state)
        return self.output(self.dropout(out.squeeze(1))), state

    def forward(self, enc: EncodedImage, inputs: Tensor) -> Tensor:
        """Teacher forcing: input words (B, T) (``<bos> w_1 ..``) -> logits (B, T, V)."""
        ctx = self.prepare(enc)
        state = self.init_state(ctx)
        if self.style == "released":
            x = self.embedding(inputs) + self.condition(self.dropout(ctx.pooled)).unsqueeze(1)
            hiddens, _ = self._run_lstm(x, state)  # (B, T, d), one call for all steps
            context, _ = self.attention(ctx, hiddens)
            return self.output(self.dropout(context + hiddens))
        logits = []
        for t in range(inputs.shape[1]):
            step_logits, state = self.step(inputs[:, t], state, ctx)
            logits.append(step_logits)
        return torch.stack(logits, dim=1)

"""Up-Down (Anderson et al. 2018) on 36 bottom-up regions, with and without MIA (Table 2).

Follows ruotianluo/self-critical.pytorch ``AttModel`` + ``UpDownCore`` (the reference Table 2's
numbers come from), step by step:

* words: ``Dropout(ReLU(Embedding(w)))``; regions: ``Dropout(ReLU(Linear(C, d)))``; the mean
  region feature (over the real regions) gets its own ``Dropout(ReLU(Linear(C, d)))``;
* attention LSTM: input ``[h_lang(t-1), mean feature, w_t]``;
* additive attention: ``alpha = softmax(w^T tanh(W_m V + W_h h_att))`` over the real regions
  (``W_m V`` computed once per image, biases as the reference), attended ``v_hat = alpha V``;
* language LSTM: input ``[v_hat, h_att]``; ``logits = Linear(Dropout(h_lang))``.

With MIA (BASELINES.md "Where MIA plugs in"): MIA takes the embedded regions and the top-36
concepts embedded with the caption word embedding (the same ``Dropout(ReLU(Embedding))`` module,
so the tie is one parameter), and its output replaces BOTH the attended features and their mean
(the masked mean of MIA's output; the separate mean-feature embedding is not built).

Sizes: ``d`` = ``captioner.d_model`` (the regions' embedded width = MIA's width),
``e`` = ``captioner.embed_dim``, attention hidden = ``captioner.attention_dim``, and the LSTMs'
size = ``options.rnn_size``. The reference has ``d = e = rnn_size = 1000`` and attention hidden
512 (configs/updown/updown.yml: rnn_size, input_encoding_size 1000, att_hid_size 512), so the
paper recipe is ``d_model: 1000, embed_dim: 1000, attention_dim: 512, options: {rnn_size: 1000}``;
dropout (``captioner.dropout``) 0.5 = the reference's ``drop_prob_lm``. The reference's region
embedding outputs ``rnn_size`` itself, so ``d_model != rnn_size`` builds a model it cannot
express (allowed here for small tests; the report lists it among the deviations,
:mod:`mia.report.deviations`).

Scheduled sampling: the training loop sets ``decoder.ss_prob`` (see
:func:`scheduled_sampling_probability`); in training mode each step after the first replaces
the ground-truth input word, with probability ``ss_prob`` per caption, by a word sampled from
the model's own previous output distribution (detached), as ``AttModel._forward`` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mia.captioning.config import CaptionerConfig
from mia.captioning.models import Captioner, register_baseline
from mia.captioning.region_encoder import (
    RegionEncoded,
    RegionEncoder,
    masked_mean,
    region_embedding,
)
from mia.captioning.sampling import PAD, next_word_log_probs
from mia.config import from_dict

State = tuple[Tensor, Tensor]  # (h, c), each (B, 2, rnn): [attention LSTM, language LSTM]


@dataclass
class UpDownOptions:
    """Up-Down's own sizes (``captioner.options`` for ``baseline: updown``)."""

    rnn_size: int = 1000  # both LSTMs (reference rnn_size)

    def __post_init__(self) -> None:
        if self.rnn_size < 1:
            raise ValueError(f"captioner.options.rnn_size: must be >= 1, got {self.rnn_size}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any],
                  where: str = "captioner.options") -> UpDownOptions:
        return from_dict(cls, values, where)


def scheduled_sampling_probability(epoch: int, start: int = 0, every: int = 5,
                                   increase: float = 0.05, max_prob: float = 0.25) -> float:
    """The reference's ``ss_prob`` for 0-based ``epoch`` (tools/train.py): 0 until ``epoch >
    start``, then ``min(increase * ((epoch - start) // every), max_prob)``; ``start < 0``
    disables it (the Transformer recipe)."""
    if start < 0 or epoch <= start:
        return 0.0
    return min(increase * ((epoch - start) // every), max_prob)


@dataclass
class UpDownContext:
    """Per-image tensors every step reuses; beam search and SCST repeat them per beam/sample."""

    memory: Tensor  # (B, n, d) attended features
    mask: Tensor  # (B, n) bool, True = real
    keys: Tensor  # (B, n, a) W_m V, computed once
    pooled: Tensor  # (B, d) the mean feature the attention LSTM reads

    def repeat_interleave(self, k: int) -> UpDownContext:
        return UpDownContext(*(t.repeat_interleave(k, dim=0) for t in
                               (self.memory, self.mask, self.keys, self.pooled)))


class UpDownAttention(nn.Module):
    """The reference's ``Attention``: additive, one hidden layer, biases, no dropout."""

    def __init__(self, d_model: int, rnn_size: int, hidden: int) -> None:
        super().__init__()
        self.w_memory = nn.Linear(d_model, hidden)  # ctx2att
        self.w_hidden = nn.Linear(rnn_size, hidden)  # h2att
        self.w_score = nn.Linear(hidden, 1)  # alpha_net

    def keys(self, memory: Tensor) -> Tensor:
        return self.w_memory(memory)

    def forward(self, h: Tensor, ctx: UpDownContext) -> tuple[Tensor, Tensor]:
        """``h`` (B, rnn) -> attended feature (B, d) and weights (B, n)."""
        scores = self.w_score(torch.tanh(ctx.keys + self.w_hidden(h).unsqueeze(1))).squeeze(-1)
        # The most negative finite value, not -inf: an image with no real region attends
        # uniformly instead of producing NaN. Elsewhere equal to the reference's
        # softmax-then-renormalise over the mask.
        scores = scores.masked_fill(~ctx.mask, torch.finfo(scores.dtype).min)
        alpha = scores.softmax(dim=-1)
        return (alpha.unsqueeze(1) @ ctx.memory).squeeze(1), alpha


class UpDownEncoder(nn.Module):
    """Regions (+ MIA) and the mean feature: base = embedded mean of the real raw regions,
    MIA = masked mean of MIA's output."""

    def __init__(self, cfg: CaptionerConfig, embed_concepts: nn.Module) -> None:
        super().__init__()
        self.regions = RegionEncoder(cfg, embed_concepts, cfg.embed_dim)
        self.embed_mean = (None if cfg.uses_mia else
                           region_embedding(cfg.feature_dim, cfg.d_model, cfg.dropout))

    def forward(self, batch: dict[str, Tensor], need_weights: bool = False) -> RegionEncoded:
        enc = self.regions(batch, need_weights=need_weights)
        if self.embed_mean is None:
            enc.pooled = masked_mean(enc.memory, enc.mask)
        else:
            raw = batch["features"].to(self.embed_mean[0].weight.dtype)
            enc.pooled = self.embed_mean(masked_mean(raw, batch["feature_mask"].bool()))
        return enc


class UpDownDecoder(nn.Module):
    """Attention LSTM -> attention -> language LSTM; see the module docstring."""

    def __init__(self, cfg: CaptionerConfig, options: UpDownOptions, vocab_size: int) -> None:
        super().__init__()
        d, e, r = cfg.d_model, cfg.embed_dim, options.rnn_size
        self.rnn_size = r
        self.embed = nn.Sequential(nn.Embedding(vocab_size, e, padding_idx=PAD), nn.ReLU(),
                                   nn.Dropout(cfg.dropout))
        self.att_lstm = nn.LSTMCell(r + d + e, r)
        self.attention = UpDownAttention(d, r, cfg.attention_dim)
        self.lang_lstm = nn.LSTMCell(d + r, r)
        self.dropout = nn.Dropout(cfg.dropout)
        self.logit = nn.Linear(r, vocab_size)
        self.ss_prob = 0.0  # set by the training loop; read only in training mode

    @property
    def word_embedding(self) -> nn.Embedding:
        return self.embed[0]  # type: ignore[return-value]

    def prepare(self, enc: RegionEncoded) -> UpDownContext:
        pooled = getattr(enc, "pooled", None)
        if pooled is None:
            pooled = masked_mean(enc.memory, enc.mask)
        return UpDownContext(enc.memory, enc.mask, self.attention.keys(enc.memory), pooled)

    def init_state(self, ctx: UpDownContext) -> State:
        zeros = ctx.memory.new_zeros(ctx.memory.shape[0], 2, self.rnn_size)
        return zeros, zeros

    def step(self, words: Tensor, state: State, ctx: UpDownContext) -> tuple[Tensor, State]:
        """Previous words (B,) -> next-word logits (B, V) and the new state."""
        h, c = state
        x = self.embed(words)
        h_att, c_att = self.att_lstm(torch.cat([h[:, 1], ctx.pooled, x], dim=-1),
                                     (h[:, 0], c[:, 0]))
        attended, _ = self.attention(h_att, ctx)
        h_lang, c_lang = self.lang_lstm(torch.cat([attended, h_att], dim=-1), (h[:, 1], c[:, 1]))
        logits = self.logit(self.dropout(h_lang))
        return logits, (torch.stack([h_att, h_lang], 1), torch.stack([c_att, c_lang], 1))

    def forward(self, enc: RegionEncoded, inputs: Tensor) -> Tensor:
        """Teacher forcing (with scheduled sampling in training): inputs (B, T) -> (B, T, V)."""
        ctx = self.prepare(enc)
        state = self.init_state(ctx)
        outputs: list[Tensor] = []
        for t in range(inputs.shape[1]):
            words = inputs[:, t]
            if self.training and t >= 1 and self.ss_prob > 0.0:
                own = torch.rand(words.shape, device=words.device) < self.ss_prob
                if bool(own.any()):
                    probs = next_word_log_probs(outputs[-1].detach()).exp()
                    sampled = torch.multinomial(probs, 1).squeeze(1)
                    words = torch.where(own, sampled, words)
            logits, state = self.step(words, state, ctx)
            outputs.append(logits)
        return torch.stack(outputs, dim=1)


def build_updown(cfg: CaptionerConfig, vocab_size: int) -> Captioner:
    """Up-Down for ``cfg.variant`` (``base`` or a MIA variant); options from ``cfg.options``."""
    options = UpDownOptions.from_dict(cfg.options, "captioner.options (baseline updown)")
    decoder = UpDownDecoder(cfg, options, vocab_size)
    encoder = UpDownEncoder(cfg, decoder.embed)
    return Captioner(cfg, encoder, decoder)  # type: ignore[arg-type]


register_baseline("updown")(build_updown)

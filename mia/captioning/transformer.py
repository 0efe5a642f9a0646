"""The Transformer captioner on 36 bottom-up regions, with and without MIA (Table 2).

Follows ruotianluo/self-critical.pytorch ``TransformerModel`` (itself the Annotated Transformer):

* regions: ``Dropout(ReLU(Linear(C, d)))`` with dropout ``captioner.dropout`` (the reference's
  ``drop_prob_lm`` 0.5), NO positional encoding on the image side;
* ``encoder_layers`` pre-norm encoder layers (self-attention, FFN), then a LayerNorm;
* words: ``Embedding(w) * sqrt(d)`` + sinusoidal positions, dropout;
* ``decoder_layers`` pre-norm decoder layers (causal self-attention, cross-attention over the
  encoder output, FFN), a LayerNorm, and an untied ``Linear(d, V)`` (``tie_output`` shares the
  word embedding instead; the reference does not);
* every sub-layer ``x + Dropout(f(LayerNorm(x)))``; attention and FFN dropout ``options.dropout``;
  Glorot-uniform initialisation of every matrix of the encoder-decoder, as the reference.
* every LayerNorm is the reference's own (``options.layer_norm: reference``, the default):
  ``a * (x - mean) / (std + eps) + b`` with the UNBIASED standard deviation and eps = 1e-6
  outside the root (:class:`ReferenceLayerNorm`); ``layer_norm: torch`` gives
  ``nn.LayerNorm(eps=1e-6)`` (biased variance, eps inside the root), which at paper size moves
  teacher-forced log-probabilities by up to ~6e-3.

With MIA: MIA's output (regions aligned with the top-36 concepts, the concepts embedded with the
caption word embedding ``Embedding * sqrt(d)``, tied) replaces the encoder's input.

Decoding is incremental: ``prepare`` computes every layer's cross-attention keys/values once per
image, and the state holds every layer's self-attention keys/values, which grow by one position
per step, so sampling and beam search cost one pass per token (the reference re-runs the whole
prefix through every layer at every step). The state is a tuple of batch-first tensors
``(k_0, v_0, k_1, v_1, ...)``, each (B, heads, t, d_k); beam search reorders it with
``index_select(0, rows)`` whatever ``t`` is. :class:`PrefixDecoder` is the reference's uncached
decoding over the same weights, for tests and the benchmark.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mia.captioning.config import CaptionerConfig
from mia.captioning.models import Captioner, register_baseline
from mia.captioning.region_encoder import RegionEncoded, RegionEncoder
from mia.config import from_dict

State = tuple[Tensor, ...]  # (k_0, v_0, ..., k_{L-1}, v_{L-1}), each (B, heads, t, d_k)


@dataclass
class TransformerOptions:
    """The Transformer's own sizes (``captioner.options`` for ``baseline: transformer``);
    defaults = configs/transformer/transformer.yml."""

    encoder_layers: int = 6  # N_enc
    decoder_layers: int = 6  # N_dec
    heads: int = 8  # num_att_heads
    d_ff: int = 2048
    dropout: float = 0.1  # inside the encoder/decoder (the region embedding uses captioner.dropout)
    tie_output: bool = False  # share the word embedding with the output layer (reference: no)
    layer_norm: Literal["reference", "torch"] = "reference"  # see ReferenceLayerNorm

    def __post_init__(self) -> None:
        for name in ("encoder_layers", "decoder_layers", "heads", "d_ff"):
            if getattr(self, name) < 1:
                raise ValueError(f"captioner.options.{name}: must be >= 1, got "
                                 f"{getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"captioner.options.dropout: must be in [0, 1), got {self.dropout}")
        if self.layer_norm not in ("reference", "torch"):
            raise ValueError(f"captioner.options.layer_norm: {self.layer_norm!r} is not "
                             "'reference' (self-critical.pytorch's) or 'torch' (nn.LayerNorm)")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any],
                  where: str = "captioner.options") -> TransformerOptions:
        return from_dict(cls, values, where)


def noam_learning_rate(step: int, d_model: int = 512, warmup: int = 20000,
                       factor: float = 1.0) -> float:
    """The reference's ``NoamOpt.rate`` for optimiser step ``step`` (1-based):
    ``factor * d^-0.5 * min(step^-0.5, step * warmup^-1.5)``."""
    step = max(step, 1)
    return factor * d_model ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)


def sinusoidal_positions(start: int, length: int, d_model: int, device: torch.device,
                         dtype: torch.dtype = torch.float32) -> Tensor:
    """Positions ``start .. start+length-1`` (length, d): sin on even, cos on odd features, in
    ``dtype`` (the word embedding's).

    Computed per position the same way whatever ``start`` is, so a cached step and a
    teacher-forced pass add bit-identical encodings.
    """
    position = torch.arange(start, start + length, device=device, dtype=dtype)
    rate = torch.exp(torch.arange(0, d_model, 2, device=device, dtype=dtype)
                     * -(math.log(10000.0) / d_model))
    angle = position.unsqueeze(1) * rate  # (length, d/2)
    return torch.stack([angle.sin(), angle.cos()], dim=-1).reshape(length, d_model)


class ReferenceLayerNorm(nn.Module):
    """self-critical.pytorch's ``TransformerModel.LayerNorm`` (the Annotated Transformer's):
    ``weight * (x - mean) / (std + eps) + bias`` over the last axis, ``std`` the UNBIASED
    standard deviation (n - 1), ``eps`` added to it, not under the root.

    Parameters are named ``weight``/``bias`` (the reference: ``a_2``/``b_2``), as
    ``nn.LayerNorm``'s, so the two forms load each other's checkpoints.
    """

    def __init__(self, features: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(features))
        self.bias = nn.Parameter(torch.zeros(features))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(-1, keepdim=True)
        std = x.std(-1, keepdim=True)  # unbiased
        return self.weight * (x - mean) / (std + self.eps) + self.bias


def layer_norm(features: int, form: str = "reference") -> nn.Module:
    """The LayerNorm of ``options.layer_norm``: :class:`ReferenceLayerNorm` or
    ``nn.LayerNorm(eps=1e-6)``."""
    return ReferenceLayerNorm(features) if form == "reference" else nn.LayerNorm(features,
                                                                                 eps=1e-6)


def _visible(mask: Tensor) -> Tensor:
    """(B, n) key mask -> (B, 1, 1, n) for attention; a row with no real key sees all keys
    (uniform over garbage rather than NaN; such an image has nothing to describe anyway)."""
    mask = mask | ~mask.any(dim=-1, keepdim=True)
    return mask[:, None, None, :]


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention with separate Q/K/V/O projections (with biases)."""

    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.d_k = heads, d_model // heads
        self.w_q = nn.Linear(d_model, d_model)
        self.w_k = nn.Linear(d_model, d_model)
        self.w_v = nn.Linear(d_model, d_model)
        self.w_o = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def _split(self, x: Tensor) -> Tensor:  # (B, T, d) -> (B, heads, T, d_k)
        return x.view(x.shape[0], x.shape[1], self.heads, self.d_k).transpose(1, 2)

    def keys_values(self, source: Tensor) -> tuple[Tensor, Tensor]:
        return self._split(self.w_k(source)), self._split(self.w_v(source))

    def attend(self, x: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None = None,
               causal: bool = False) -> Tensor:
        """Queries from ``x`` (B, T, d) over ``keys``/``values`` (B, heads, S, d_k)."""
        q = self._split(self.w_q(x))
        out = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, is_causal=causal,
            dropout_p=self.dropout if self.training else 0.0)  # (B, heads, T, d_k)
        return self.w_o(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.w_1 = nn.Linear(d_model, d_ff)
        self.w_2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(self.dropout(F.relu(self.w_1(x))))


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, heads: int, d_ff: int, dropout: float,
                 norm: str = "reference") -> None:
        super().__init__()
        self.norm_attention = layer_norm(d_model, norm)
        self.attention = MultiHeadAttention(d_model, heads, dropout)
        self.norm_ffn = layer_norm(d_model, norm)
        self.ffn = FeedForward(d_model, d_ff, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.norm_attention(x)
        x = x + self.dropout(self.attention.attend(h, *self.attention.keys_values(h), mask))
        return x + self.dropout(self.ffn(self.norm_ffn(x)))


class DecoderLayer(nn.Module):
    def __init__(self, d_model: int, heads: int, d_ff: int, dropout: float,
                 norm: str = "reference") -> None:
        super().__init__()
        self.norm_self = layer_norm(d_model, norm)
        self.self_attention = MultiHeadAttention(d_model, heads, dropout)
        self.norm_cross = layer_norm(d_model, norm)
        self.cross_attention = MultiHeadAttention(d_model, heads, dropout)
        self.norm_ffn = layer_norm(d_model, norm)
        self.ffn = FeedForward(d_model, d_ff, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, cross: tuple[Tensor, Tensor], memory_mask: Tensor,
                cache: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``x`` (B, T, d): the whole sequence (``cache`` None, causal) or the newest position
        (T = 1) after the cached ``cache`` positions. Returns x and this layer's self-attention
        keys/values including the new positions."""
        h = self.norm_self(x)
        keys, values = self.self_attention.keys_values(h)
        if cache is not None and cache[0].shape[2] > 0:
            if x.shape[1] != 1:
                raise ValueError("cached decoding takes one new position at a time")
            keys = torch.cat([cache[0], keys], dim=2)
            values = torch.cat([cache[1], values], dim=2)
        x = x + self.dropout(self.self_attention.attend(h, keys, values,
                                                        causal=x.shape[1] > 1))
        x = x + self.dropout(self.cross_attention.attend(self.norm_cross(x), *cross,
                                                         memory_mask))
        return x + self.dropout(self.ffn(self.norm_ffn(x))), keys, values


class ScaledEmbedding(nn.Module):
    """``Embedding(w) * sqrt(d)``: the caption words, and (tied) the concepts."""

    def __init__(self, vocab_size: int, d_model: int) -> None:
        super().__init__()
        self.lut = nn.Embedding(vocab_size, d_model)
        self.scale = math.sqrt(d_model)

    def forward(self, ids: Tensor) -> Tensor:
        return self.lut(ids) * self.scale


class TransformerImageEncoder(nn.Module):
    """Regions (or MIA's output) -> the Transformer encoder -> memory (B, n, d)."""

    def __init__(self, cfg: CaptionerConfig, options: TransformerOptions,
                 embed_concepts: nn.Module) -> None:
        super().__init__()
        self.regions = RegionEncoder(cfg, embed_concepts, cfg.d_model)
        self.layers = nn.ModuleList(
            EncoderLayer(cfg.d_model, options.heads, options.d_ff, options.dropout,
                         options.layer_norm)
            for _ in range(options.encoder_layers))
        self.norm = layer_norm(cfg.d_model, options.layer_norm)

    def forward(self, batch: dict[str, Tensor], need_weights: bool = False) -> RegionEncoded:
        enc = self.regions(batch, need_weights=need_weights)
        x, mask = enc.memory, _visible(enc.mask)
        for layer in self.layers:
            x = layer(x, mask)
        enc.memory = self.norm(x)
        return enc


@dataclass
class TransformerContext:
    """Per-image tensors every step reuses: the encoder output, its mask, and every decoder
    layer's cross-attention keys/values ``(k_0, v_0, ...)``, each (B, heads, n, d_k)."""

    memory: Tensor  # (B, n, d)
    mask: Tensor  # (B, n) bool
    cross: tuple[Tensor, ...]

    @property
    def attention_mask(self) -> Tensor:
        return _visible(self.mask)

    def repeat_interleave(self, k: int) -> TransformerContext:
        return TransformerContext(self.memory.repeat_interleave(k, dim=0),
                                  self.mask.repeat_interleave(k, dim=0),
                                  tuple(t.repeat_interleave(k, dim=0) for t in self.cross))


class TransformerDecoder(nn.Module):
    """Word embedding + positions -> decoder layers -> LayerNorm -> logits; cached stepping."""

    def __init__(self, cfg: CaptionerConfig, options: TransformerOptions,
                 vocab_size: int) -> None:
        super().__init__()
        d = cfg.d_model
        self.d_model, self.heads = d, options.heads
        self.embed = ScaledEmbedding(vocab_size, d)
        self.embed_dropout = nn.Dropout(options.dropout)
        self.layers = nn.ModuleList(
            DecoderLayer(d, options.heads, options.d_ff, options.dropout, options.layer_norm)
            for _ in range(options.decoder_layers))
        self.norm = layer_norm(d, options.layer_norm)
        self.output = nn.Linear(d, vocab_size)
        if options.tie_output:
            self.output.weight = self.embed.lut.weight

    def _embed(self, words: Tensor, start: int) -> Tensor:
        """Words (B, T) at positions start.. -> (B, T, d)."""
        positions = sinusoidal_positions(start, words.shape[1], self.d_model, words.device,
                                         self.embed.lut.weight.dtype)
        return self.embed_dropout(self.embed(words) + positions)

    def cross_keys_values(self, memory: Tensor) -> tuple[Tensor, ...]:
        return tuple(t for layer in self.layers
                     for t in layer.cross_attention.keys_values(memory))

    def prepare(self, enc: RegionEncoded) -> TransformerContext:
        return TransformerContext(enc.memory, enc.mask, self.cross_keys_values(enc.memory))

    def init_state(self, ctx: TransformerContext) -> State:
        empty = ctx.memory.new_zeros(ctx.memory.shape[0], self.heads, 0,
                                     self.d_model // self.heads)
        return (empty,) * (2 * len(self.layers))

    def step(self, words: Tensor, state: State, ctx: TransformerContext
             ) -> tuple[Tensor, State]:
        """Previous words (B,) -> next-word logits (B, V); the state grows by one position."""
        x = self._embed(words.unsqueeze(1), start=state[0].shape[2])  # (B, 1, d)
        mask = ctx.attention_mask
        new_state: list[Tensor] = []
        for i, layer in enumerate(self.layers):
            x, keys, values = layer(x, (ctx.cross[2 * i], ctx.cross[2 * i + 1]), mask,
                                    cache=(state[2 * i], state[2 * i + 1]))
            new_state += [keys, values]
        return self.output(self.norm(x)).squeeze(1), tuple(new_state)

    def hidden(self, ctx: TransformerContext, inputs: Tensor,
               cross: tuple[Tensor, ...] | None = None) -> Tensor:
        """Every position at once (causal): inputs (B, T) -> final states (B, T, d)."""
        cross = ctx.cross if cross is None else cross
        x = self._embed(inputs, start=0)
        mask = ctx.attention_mask
        for i, layer in enumerate(self.layers):
            x, _, _ = layer(x, (cross[2 * i], cross[2 * i + 1]), mask)
        return self.norm(x)

    def decode(self, ctx: TransformerContext, inputs: Tensor) -> Tensor:
        """Every position at once (causal): inputs (B, T) -> logits (B, T, V)."""
        return self.output(self.hidden(ctx, inputs))

    def forward(self, enc: RegionEncoded, inputs: Tensor) -> Tensor:
        """Teacher forcing: input words (B, T) (``<bos> w_1 ..``) -> logits (B, T, V)."""
        return self.decode(self.prepare(enc), inputs)


class PrefixDecoder(nn.Module):
    """The reference's decoding over a :class:`TransformerDecoder`'s weights: no cache.

    The state is the prefix of words (B, t); every step runs the whole prefix through every
    layer again and recomputes the cross-attention keys/values from the memory, as
    ``TransformerModel.core`` does. Same function as the cached decoder, O(t) times the work.
    """

    def __init__(self, decoder: TransformerDecoder) -> None:
        super().__init__()
        self.inner = decoder

    def prepare(self, enc: RegionEncoded) -> TransformerContext:
        return TransformerContext(enc.memory, enc.mask, ())

    def init_state(self, ctx: TransformerContext) -> tuple[Tensor]:
        return (torch.zeros(ctx.memory.shape[0], 0, dtype=torch.long,
                            device=ctx.memory.device),)

    def step(self, words: Tensor, state: tuple[Tensor], ctx: TransformerContext
             ) -> tuple[Tensor, tuple[Tensor]]:
        prefix = torch.cat([state[0], words.unsqueeze(1)], dim=1)
        cross = self.inner.cross_keys_values(ctx.memory)
        # Only the last position is read out, as TransformerModel.core returns out[:, -1].
        last = self.inner.hidden(ctx, prefix, cross)[:, -1]
        return self.inner.output(last), (prefix,)

    def forward(self, enc: RegionEncoded, inputs: Tensor) -> Tensor:
        return self.inner(enc, inputs)


def _glorot(*modules: nn.Module) -> None:
    for module in modules:
        for p in module.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)


def build_transformer(cfg: CaptionerConfig, vocab_size: int) -> Captioner:
    """The Transformer for ``cfg.variant``; options from ``cfg.options``."""
    options = TransformerOptions.from_dict(cfg.options, "captioner.options (baseline transformer)")
    if cfg.embed_dim != cfg.d_model:
        raise ValueError(f"captioner: the Transformer embeds words at its model width; set "
                         f"embed_dim = d_model (got embed_dim={cfg.embed_dim}, "
                         f"d_model={cfg.d_model})")
    if cfg.d_model % options.heads or cfg.d_model % 2:
        raise ValueError(f"captioner.options.heads: the Transformer's captioner.d_model="
                         f"{cfg.d_model} must be even and divisible by options.heads="
                         f"{options.heads}")
    decoder = TransformerDecoder(cfg, options, vocab_size)
    encoder = TransformerImageEncoder(cfg, options, decoder.embed)
    # The reference initialises its encoder-decoder (not the region embedding) with Glorot.
    _glorot(encoder.layers, decoder)
    return Captioner(cfg, encoder, decoder)  # type: ignore[arg-type]


register_baseline("transformer")(build_transformer)

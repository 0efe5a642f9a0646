"""Mutual Iterative Attention (MIA), Eq. (1)-(7) of Liu et al., NeurIPS 2019.

MIA refines visual features I (grid cells or regions) and textual concepts T (embedded visual
words) of one image by letting each modality decide how the other is regrouped:

* Eq. (1)-(2): multi-head scaled dot-product attention whose queries come from the OTHER modality
  and whose keys and values come from the modality being refined (the "source").
* Eq. (3): a position-wise feed-forward network.
* Each sub-layer is followed by dropout, a shortcut and LayerNorm. The attention sub-layer's
  shortcut adds the SOURCE (footnote 3), never the queries, so no heterogeneous information is
  injected: refined visual features are mixtures of visual features only.
* Section 2.2.2: the same post-processing is applied to the whole layer, with the shortcut from the
  layer's input (the source), a "semantic anchor" against over-smoothing.
* Eq. (4)-(6): visual first, I_k = layer_v(T_{k-1}, I_{k-1}), then T_k = layer_t(I_k, T_{k-1}),
  for k = 1..N with ONE visual and ONE textual layer reused at every iteration.
* Eq. (7): MIA(I, T) = LayerNorm(I_N + T_N).

Because the shortcut adds position j of the source to the output for query j, both modalities must
have the same number of positions (49 concepts for 49 grid cells, 36 for 36 regions).

Padding: masks are ``(B, n)`` bools, True for real positions. Padded positions are zeroed on input
and after every layer, and are excluded as attention keys, so the values at padded positions can
never change a real output. (A padded query is a zero vector; it reads a fixed mixture of real keys.)

The authors' released code (fenglinliu98/MIA, ``Models/Layers.py``, ``SubLayers.py``,
``Modules.py``) differs from the text in four places. Each is a constructor option whose default is
the paper's text; ``docs/RECIPE.md`` lists them and the captioners select the released set:

* ``textual_layer_shortcut=False``: the textual layer has no layer-level shortcut (and no
  LayerNorm) at all (their ``RefineTextualLayer``);
* ``attention_bias=True``: biases on the Q/K/V/O projections, which Eq. (1)-(2) do not have;
* ``attention_dropout=0.1``: dropout on the attention WEIGHTS after the softmax (their
  ``ScaledDotProductAttention``), on top of the dropout on the sub-layer output;
* ``layer_dropout=False``: no dropout before the layer-level LayerNorm (their visual layer adds the
  source to the FCN sub-layer's output directly).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Mode = Literal["mutual", "self"]
Order = Literal["visual_first", "concepts_first"]


@dataclass
class MIAOutput:
    """Everything MIA computes for one batch.

    ``attention`` holds, per iteration, the pair (weights that refine the visual features: queries
    are concepts, keys are regions; weights that refine the concepts: queries are the refined
    visual features, keys are concepts), each ``(B, heads, n, n)``. It is ``None`` unless the
    forward pass was asked for it (``need_weights=True``), because materialising the weights
    forgoes the fused attention kernel.
    """

    visual: Tensor  # I_N (B, n, d)
    concepts: Tensor  # T_N (B, n, d)
    fused: Tensor  # LayerNorm(I_N + T_N) (B, n, d), Eq. (7)
    steps: list[tuple[Tensor, Tensor]]  # (I_k, T_k) for k = 1..N
    attention: list[tuple[Tensor, Tensor]] | None
    visual_mask: Tensor | None  # (B, n) True = real, or None when no mask was given
    concept_mask: Tensor | None


class MultiHeadAttention(nn.Module):
    """Eq. (1)-(2): k heads of scaled dot-product attention, concatenated, then W^O."""

    def __init__(self, d_model: int, heads: int, bias: bool = False,
                 weight_dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model={d_model} is not divisible by heads={heads}")
        self.heads = heads
        self.d_k = d_model // heads
        self.w_q = nn.Linear(d_model, d_model, bias=bias)  # [W^Q_1 .. W^Q_k]
        self.w_kv = nn.Linear(d_model, 2 * d_model, bias=bias)  # [W^K_1 .. W^K_k | W^V_1 .. W^V_k]
        self.w_o = nn.Linear(d_model, d_model, bias=bias)  # W^O
        # Dropout on the softmax weights (released code); p = 0 is the paper's text.
        self.weight_dropout = nn.Dropout(weight_dropout)

    def _split(self, x: Tensor) -> Tensor:  # (B, n, d) -> (B, heads, n, d_k)
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.d_k).transpose(1, 2)

    def forward(self, query: Tensor, source: Tensor, source_mask: Tensor | None = None,
                need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        q = self._split(self.w_q(query))
        k, v = (self._split(t) for t in self.w_kv(source).chunk(2, dim=-1))
        if source_mask is not None:
            # An item with no real key at all would softmax over nothing (NaN); let it attend
            # uniformly instead; its outputs are zeroed by the caller anyway.
            source_mask = source_mask | ~source_mask.any(dim=-1, keepdim=True)
        # (B, 1, 1, n) so every head and every query ignores padded keys.
        bias = None if source_mask is None else source_mask[:, None, None, :]
        weights = None
        # The explicit path also serves dropout on the weights, so that the dropout is an ordinary
        # module (seeded by torch's RNG like every other dropout, and replaceable in tests).
        drop_weights = self.training and self.weight_dropout.p > 0
        if need_weights or drop_weights:
            scores = q @ k.transpose(-2, -1) / self.d_k**0.5
            if bias is not None:
                scores = scores.masked_fill(~bias, float("-inf"))
            weights = scores.softmax(dim=-1)  # returned before dropout: a distribution
            context = (self.weight_dropout(weights) if drop_weights else weights) @ v
        else:
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        b, _, n, _ = context.shape
        return (self.w_o(context.transpose(1, 2).reshape(b, n, -1)),
                weights if need_weights else None)


class FeedForward(nn.Module):
    """Eq. (3): FCN(X) = max(0, X W1 + b1) W2 + b2."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.w_1 = nn.Linear(d_model, d_ff)
        self.w_2 = nn.Linear(d_ff, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(F.relu(self.w_1(x)))


class MutualAttentionLayer(nn.Module):
    """One refining layer: attention sub-layer, FCN sub-layer, then the layer-level anchor.

    h1  = LN(S + Dropout(MultiHeadAtt(Q, S)))        shortcut from the source (footnote 3)
    h2  = LN(h1 + Dropout(FCN(h1)))
    out = LN(S + Dropout(h2))                         layer-level shortcut (section 2.2.2)

    With ``layer_shortcut=False`` the last line is skipped (``out = h2``), as in the released
    code's textual layer; with ``layer_dropout=False`` it reads ``LN(S + h2)``, as in their visual
    layer. ``attention_dropout`` drops attention weights inside MultiHeadAtt (released: 0.1).
    """

    def __init__(self, d_model: int, heads: int, d_ff: int, dropout: float,
                 layer_shortcut: bool = True, attention_bias: bool = False,
                 attention_dropout: float = 0.0, layer_dropout: bool = True) -> None:
        super().__init__()
        self.attention = MultiHeadAttention(d_model, heads, bias=attention_bias,
                                            weight_dropout=attention_dropout)
        self.norm_attention = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, d_ff)
        self.norm_ffn = nn.LayerNorm(d_model)
        self.layer_shortcut = layer_shortcut
        self.layer_dropout = layer_dropout
        self.norm_layer = nn.LayerNorm(d_model) if layer_shortcut else None
        self.dropout = nn.Dropout(dropout)

    def forward(self, query: Tensor, source: Tensor, source_mask: Tensor | None = None,
                need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        attended, weights = self.attention(query, source, source_mask, need_weights)
        h = self.norm_attention(source + self.dropout(attended))
        h = self.norm_ffn(h + self.dropout(self.ffn(h)))
        if self.norm_layer is not None:
            h = self.norm_layer(source + (self.dropout(h) if self.layer_dropout else h))
        return h, weights


def _zero_padded(x: Tensor, mask: Tensor | None) -> Tensor:
    return x if mask is None else x.masked_fill(~mask[..., None], 0.0)


class MutualIterativeAttention(nn.Module):
    """MIA: N rounds of mutual attention with one shared visual and one shared textual layer.

    Args:
        d_model: feature size d_h of both modalities (project them to it beforehand).
        heads: attention heads k (d_k = d_model / heads).
        d_ff: hidden size of the FCN.
        iterations: N, the number of mutual-attention rounds (2 in the paper).
        dropout: dropout of every sub-layer and layer output.
        mode: ``"mutual"`` (the paper) or ``"self"`` (section 3.3 ablation: each modality queries
            itself, so nothing aligns the two).
        order: ``"visual_first"`` (Eq. 4) or ``"concepts_first"`` (the reversed order the paper
            reports as worse).
        textual_layer_shortcut: keep the layer-level shortcut on the textual layer (the paper);
            False reproduces the released code, which omits it.
        attention_bias: add biases to the attention projections (released code); Eq. (1)-(2) have
            none.
        attention_dropout: dropout on the attention weights after the softmax (released: 0.1;
            the paper's text has none).
        layer_dropout: dropout before the layer-level LayerNorm (the paper's "same
            post-processing"); False reproduces the released code.
    """

    def __init__(self, d_model: int = 512, heads: int = 8, d_ff: int = 2048, iterations: int = 2,
                 dropout: float = 0.1, mode: Mode = "mutual", order: Order = "visual_first",
                 textual_layer_shortcut: bool = True, attention_bias: bool = False,
                 attention_dropout: float = 0.0, layer_dropout: bool = True) -> None:
        super().__init__()
        if not 0.0 <= attention_dropout < 1.0:
            raise ValueError(f"attention_dropout must be in [0, 1), got {attention_dropout}")
        if mode not in ("mutual", "self"):
            raise ValueError(f"mode must be 'mutual' or 'self', got {mode!r}")
        if order not in ("visual_first", "concepts_first"):
            raise ValueError(f"order must be 'visual_first' or 'concepts_first', got {order!r}")
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        self.d_model = d_model
        self.iterations = iterations
        self.mode = mode
        self.order = order
        shared = dict(attention_bias=attention_bias, attention_dropout=attention_dropout,
                      layer_dropout=layer_dropout)
        self.visual_layer = MutualAttentionLayer(d_model, heads, d_ff, dropout, **shared)
        self.textual_layer = MutualAttentionLayer(d_model, heads, d_ff, dropout,
                                                  layer_shortcut=textual_layer_shortcut, **shared)
        self.norm_fused = nn.LayerNorm(d_model)

    def _refine_visual(self, visual: Tensor, concepts: Tensor, visual_mask: Tensor | None,
                       need_weights: bool) -> tuple[Tensor, Tensor | None]:
        query = concepts if self.mode == "mutual" else visual
        out, weights = self.visual_layer(query, visual, visual_mask, need_weights)
        return _zero_padded(out, visual_mask), weights

    def _refine_concepts(self, visual: Tensor, concepts: Tensor, concept_mask: Tensor | None,
                         need_weights: bool) -> tuple[Tensor, Tensor | None]:
        query = visual if self.mode == "mutual" else concepts
        out, weights = self.textual_layer(query, concepts, concept_mask, need_weights)
        return _zero_padded(out, concept_mask), weights

    def forward(self, visual: Tensor, concepts: Tensor, visual_mask: Tensor | None = None,
                concept_mask: Tensor | None = None, need_weights: bool = False) -> MIAOutput:
        """Refine ``visual`` (B, n, d) and ``concepts`` (B, n, d); see :class:`MIAOutput`."""
        if visual.dim() != 3 or visual.shape[-1] != self.d_model:
            raise ValueError(
                f"visual and concepts must be (B, n, d_model={self.d_model}), got visual "
                f"{tuple(visual.shape)}: project features to d_model before MIA")
        if visual.shape != concepts.shape:
            raise ValueError(
                f"visual {tuple(visual.shape)} and concepts {tuple(concepts.shape)} must have the "
                "same shape: MIA's shortcut aligns position j of both (49 grid cells with 49 "
                "concepts, 36 regions with 36 concepts)")
        for name, mask in (("visual_mask", visual_mask), ("concept_mask", concept_mask)):
            if mask is not None and (mask.dtype != torch.bool or mask.shape != visual.shape[:2]):
                raise ValueError(f"{name} must be a bool tensor of shape {tuple(visual.shape[:2])}"
                                 f", got {mask.dtype} {tuple(mask.shape)}")
        image = _zero_padded(visual, visual_mask)
        text = _zero_padded(concepts, concept_mask)
        steps: list[tuple[Tensor, Tensor]] = []
        attention: list[tuple[Tensor, Tensor]] = []
        for _ in range(self.iterations):
            if self.order == "visual_first":
                image, w_visual = self._refine_visual(image, text, visual_mask, need_weights)
                text, w_text = self._refine_concepts(image, text, concept_mask, need_weights)
            else:
                text, w_text = self._refine_concepts(image, text, concept_mask, need_weights)
                image, w_visual = self._refine_visual(image, text, visual_mask, need_weights)
            steps.append((image, text))
            if need_weights:
                attention.append((w_visual, w_text))
        return MIAOutput(
            visual=image,
            concepts=text,
            fused=self.norm_fused(image + text),
            steps=steps,
            attention=attention if need_weights else None,
            visual_mask=visual_mask,
            concept_mask=concept_mask,
        )

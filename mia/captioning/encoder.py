"""The image side of a captioner: visual features and concepts -> what the decoder consumes.

One encoder serves every variant (docs/RECIPE.md, "Runs"), so the only difference between a
baseline and its ``w/ MIA`` run is which tensors reach the decoder. A baseline consumes the visual
features V (Visual Attention, Visual Regional Attention), the concepts T (Concept Attention), or
both (Visual/Concept Condition), and the encoder hands over, per variant:

* ``base``: the projected visual features V = ReLU(W dropout(F)) and/or the embedded concepts T;
  MIA is not even built;
* ``mia`` / ``self_attention`` / ``mia_n{k}``: LayerNorm(I_N + T_N), Eq. (7), as BOTH V and T
  (the released ``Encoder2Decoder`` sets ``V = T = SGIR``);
* ``mia_visual``: V = I_N, T unchanged; ``mia_concepts``: T = T_N, V unchanged (Table 4). A
  single-modality variant of a baseline that never reads that modality would train the base
  model with an unused MIA, so it is refused.

``memory`` is the decoder's attention source: V for the visual baselines, T for the concept ones.

Concepts are embedded with the caption decoder's word embedding (tied, as in the authors' code),
so a concept word and the same caption word start from the same vector. As many concepts are kept
as there are visual features (49 grid cells, 36 regions), the top ones of the concept store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from mia.attention import MIAOutput, MutualIterativeAttention
from mia.captioning.config import CaptionerConfig

Source = Literal["visual", "concepts", "both"]
_SOURCES = ("visual", "concepts", "both")


@dataclass
class EncodedImage:
    """What the decoder consumes.

    ``memory`` ``(B, n, d)`` and ``mask`` ``(B, n)`` (True = real): the attention source.
    ``mia``: MIA's full output (None for ``base``). ``visual``/``concepts`` with their masks: V and
    T as the baseline sees them (None when the baseline does not consume that modality).
    """

    memory: Tensor
    mask: Tensor
    mia: MIAOutput | None
    visual: Tensor | None = None
    visual_mask: Tensor | None = None
    concepts: Tensor | None = None
    concept_mask: Tensor | None = None


def mia_from_config(cfg: CaptionerConfig) -> MutualIterativeAttention:
    """The MIA module a captioner config asks for (variant, iterations, released/paper options)."""
    return MutualIterativeAttention(
        d_model=cfg.d_model, heads=cfg.mia_heads, d_ff=cfg.mia_d_ff, iterations=cfg.iterations,
        dropout=cfg.mia_dropout, mode="self" if cfg.variant == "self_attention" else "mutual",
        order=cfg.mia_order, textual_layer_shortcut=bool(cfg.mia_textual_layer_shortcut),
        attention_bias=bool(cfg.mia_attention_bias),
        attention_dropout=float(cfg.mia_attention_dropout or 0.0),
        layer_dropout=bool(cfg.mia_layer_dropout))


def check_variant(cfg: CaptionerConfig, source: Source) -> None:
    """Refuse a Table 4 single-modality variant on a baseline that never reads that modality."""
    if cfg.variant == "mia_visual" and source == "concepts":
        raise ValueError(
            f"captioner: variant 'mia_visual' (I_N only) on baseline {cfg.baseline!r}, which "
            "attends to concepts and never reads visual features: the run would be the base "
            "model. Table 4 pairs mia_visual with visual_attention and mia_concepts with "
            "concept_attention")
    if cfg.variant == "mia_concepts" and source == "visual":
        raise ValueError(
            f"captioner: variant 'mia_concepts' (T_N only) on baseline {cfg.baseline!r}, which "
            "reads visual features only: the run would be the base model. Table 4 pairs "
            "mia_concepts with concept_attention and mia_visual with visual_attention")


class ImageEncoder(nn.Module):
    """Projects visual features, embeds concepts, and (for MIA variants) aligns the two.

    ``source`` is what the baseline consumes: ``visual``, ``concepts`` or ``both``.
    """

    def __init__(self, cfg: CaptionerConfig, word_embedding: nn.Embedding, source: Source) -> None:
        super().__init__()
        if source not in _SOURCES:
            raise ValueError(f"source must be one of {_SOURCES}, got {source!r}")
        check_variant(cfg, source)
        self.variant = cfg.variant
        self.source = source
        self.reads_visual = source in ("visual", "both")
        self.reads_concepts = source in ("concepts", "both")
        self.needs_visual = cfg.uses_mia or self.reads_visual
        self.needs_concepts = cfg.uses_mia or self.reads_concepts
        # Released EncoderCNN: V = ReLU(W dropout(F)) with dropout 0.5.
        self.visual_proj = nn.Sequential(
            nn.Dropout(cfg.dropout), nn.Linear(cfg.feature_dim, cfg.d_model), nn.ReLU()
        ) if self.needs_visual else None
        self.word_embedding = word_embedding  # shared with the decoder, not a copy
        self.concept_proj: nn.Module = (
            nn.Identity() if word_embedding.embedding_dim == cfg.d_model
            else nn.Linear(word_embedding.embedding_dim, cfg.d_model))
        self.mia: MutualIterativeAttention | None = mia_from_config(cfg) if cfg.uses_mia else None

    def _inputs(self, batch: dict[str, Tensor]) -> tuple[Tensor | None, Tensor | None,
                                                         Tensor | None, Tensor | None]:
        visual = visual_mask = concepts = concept_mask = None
        if self.needs_visual:
            # Stores may hand over float16 (cast here, on the model's device); float64 in tests.
            weight = self.visual_proj[1].weight  # type: ignore[index]
            visual = self.visual_proj(batch["features"].to(weight.dtype))  # type: ignore[misc]
            visual_mask = batch["feature_mask"].bool()
        if self.needs_concepts:
            ids, concept_mask = batch["concepts"].long(), batch["concept_mask"].bool()
            n = batch["features"].shape[1]
            if ids.shape[1] < n and self.mia is not None:
                raise ValueError(
                    f"batch has {ids.shape[1]} concepts per image but {n} visual features; "
                    f"MIA aligns position j of both, so extract at least k={n} concepts")
            # The paper keeps as many concepts as visual features (49 grid, 36 regions), also for
            # the concept baselines; the store lists them by descending probability.
            ids, concept_mask = ids[:, :n], concept_mask[:, :n]
            concepts = self.concept_proj(self.word_embedding(ids))  # (B, n, d)
        return visual, visual_mask, concepts, concept_mask

    def forward(self, batch: dict[str, Tensor], need_weights: bool = False) -> EncodedImage:
        visual, visual_mask, concepts, concept_mask = self._inputs(batch)
        out = None
        if self.mia is not None:
            out = self.mia(visual, concepts, visual_mask, concept_mask, need_weights=need_weights)
            if self.variant == "mia_visual":
                visual = out.visual
            elif self.variant == "mia_concepts":
                concepts = out.concepts
            else:
                # The fused position j is real when either of its parts is (MIA zeroes padding).
                fused_mask = torch.logical_or(visual_mask, concept_mask)  # type: ignore[arg-type]
                visual, visual_mask, concepts, concept_mask = (out.fused, fused_mask,
                                                               out.fused, fused_mask)
        if not self.reads_visual:
            visual = visual_mask = None
        if not self.reads_concepts:
            concepts = concept_mask = None
        memory, mask = ((visual, visual_mask) if self.reads_visual else (concepts, concept_mask))
        return EncodedImage(memory, mask, out, visual, visual_mask,  # type: ignore[arg-type]
                            concepts, concept_mask)

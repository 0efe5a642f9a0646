"""The image side of a captioner: visual features and concepts -> the decoder's memory.

One encoder serves every variant of DESIGN.md section 2, so the only difference between a
baseline and its ``w/ MIA`` run is which tensor the decoder attends to:

* ``base``: the baseline's own source, the projected visual features (``visual_attention``) or the
  embedded concepts (``concept_attention``); MIA is not even built.
* ``mia`` / ``self_attention`` / ``mia_n{k}``: LayerNorm(I_N + T_N), Eq. (7).
* ``mia_visual``: I_N only; ``mia_concepts``: T_N only (Table 4).

Concepts are embedded with the caption decoder's word embedding (tied, as in the authors' code),
so a concept word and the same caption word start from the same vector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from mia.attention import MIAOutput, MutualIterativeAttention
from mia.captioning.config import CaptionerConfig

Source = Literal["visual", "concepts"]


@dataclass
class EncodedImage:
    """The decoder's memory ``(B, n, d)``, its mask ``(B, n)`` (True = real), MIA's output."""

    memory: Tensor
    mask: Tensor
    mia: MIAOutput | None


class ImageEncoder(nn.Module):
    """Projects visual features, embeds concepts, and (for MIA variants) aligns the two."""

    def __init__(self, cfg: CaptionerConfig, word_embedding: nn.Embedding, source: Source) -> None:
        super().__init__()
        if source not in ("visual", "concepts"):
            raise ValueError(f"source must be 'visual' or 'concepts', got {source!r}")
        self.variant = cfg.variant
        self.source = source
        self.needs_visual = cfg.uses_mia or source == "visual"
        self.needs_concepts = cfg.uses_mia or source == "concepts"
        # Released code: V = ReLU(W dropout(V)) with dropout 0.5.
        self.visual_proj = nn.Sequential(
            nn.Dropout(cfg.dropout), nn.Linear(cfg.feature_dim, cfg.d_model), nn.ReLU()
        ) if self.needs_visual else None
        self.word_embedding = word_embedding  # shared with the decoder, not a copy
        self.concept_proj: nn.Module = (
            nn.Identity() if word_embedding.embedding_dim == cfg.d_model
            else nn.Linear(word_embedding.embedding_dim, cfg.d_model))
        self.mia: MutualIterativeAttention | None = None
        if cfg.uses_mia:
            self.mia = MutualIterativeAttention(
                d_model=cfg.d_model, heads=cfg.mia_heads, d_ff=cfg.mia_d_ff,
                iterations=cfg.iterations, dropout=cfg.mia_dropout,
                mode="self" if cfg.variant == "self_attention" else "mutual",
                order=cfg.mia_order, textual_layer_shortcut=cfg.mia_textual_layer_shortcut)

    def _inputs(self, batch: dict[str, Tensor]) -> tuple[Tensor | None, Tensor | None,
                                                         Tensor | None, Tensor | None]:
        visual = visual_mask = concepts = concept_mask = None
        if self.needs_visual:
            visual = self.visual_proj(batch["features"].float())  # type: ignore[misc]
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
        if self.mia is None:
            if self.source == "visual":
                return EncodedImage(visual, visual_mask, None)  # type: ignore[arg-type]
            return EncodedImage(concepts, concept_mask, None)  # type: ignore[arg-type]
        out = self.mia(visual, concepts, visual_mask, concept_mask, need_weights=need_weights)
        if self.variant == "mia_visual":
            return EncodedImage(out.visual, visual_mask, out)  # type: ignore[arg-type]
        if self.variant == "mia_concepts":
            return EncodedImage(out.concepts, concept_mask, out)  # type: ignore[arg-type]
        # The fused position j is real when either of its parts is (MIA zeroes padded parts).
        return EncodedImage(out.fused, torch.logical_or(visual_mask, concept_mask), out)

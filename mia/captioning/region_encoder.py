"""The image side of the Table 2 captioners: 36 bottom-up regions (+ concepts) -> memory.

Up-Down and the Transformer both embed each region feature with the same layer before anything
else (ruotianluo/self-critical.pytorch ``att_embed``): ``Dropout(ReLU(Linear(C, d)))``. BASELINES.md
places MIA right after that embedding, at its width ``d``: MIA aligns the embedded regions with
the image's top-n concepts (n = number of regions, 36), embedded with the caption word embedding
(tied), and its output replaces what the baseline would have consumed:

* ``base``: the embedded regions, MIA not built;
* ``mia`` / ``self_attention`` / ``mia_n{k}``: LayerNorm(I_N + T_N), Eq. (7);
* ``mia_visual``: I_N only; ``mia_concepts``: T_N only (Table 4's ablation).

Padded regions (``feature_mask`` False) never reach a real output: the baseline path masks them
wherever they are read, and MIA zeroes them and never attends to them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mia.attention import MutualIterativeAttention
from mia.captioning.config import CaptionerConfig
from mia.captioning.encoder import EncodedImage


@dataclass
class RegionEncoded(EncodedImage):
    """``EncodedImage`` plus the pooled image vector ``(B, d)`` Up-Down's attention LSTM reads
    (None for decoders that need none)."""

    pooled: Tensor | None = None


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over real positions: (B, n, d), (B, n) bool -> (B, d); all-padded rows give 0."""
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def region_embedding(feature_dim: int, d_model: int, dropout: float) -> nn.Sequential:
    """``att_embed`` of the reference: Linear -> ReLU -> Dropout (in that order)."""
    return nn.Sequential(nn.Linear(feature_dim, d_model), nn.ReLU(), nn.Dropout(dropout))


class RegionEncoder(nn.Module):
    """Embeds the regions and, for the MIA variants, aligns them with the embedded concepts.

    ``embed_concepts`` maps caption-vocabulary ids (B, n) to (B, n, ``concept_dim``); it must be
    the decoder's own word embedding (a module holding the same ``nn.Embedding``), so the tie is
    a shared parameter, not a copy. When ``concept_dim`` differs from ``d_model`` a linear map
    brings the concepts to MIA's width.
    """

    def __init__(self, cfg: CaptionerConfig, embed_concepts: nn.Module, concept_dim: int) -> None:
        super().__init__()
        self.variant = cfg.variant
        self.embed_regions = region_embedding(cfg.feature_dim, cfg.d_model, cfg.dropout)
        self.mia: MutualIterativeAttention | None = None
        self.embed_concepts: nn.Module | None = None
        self.concept_proj: nn.Module | None = None
        if cfg.uses_mia:
            self.embed_concepts = embed_concepts
            self.concept_proj = (nn.Identity() if concept_dim == cfg.d_model
                                 else nn.Linear(concept_dim, cfg.d_model))
            self.mia = MutualIterativeAttention(
                d_model=cfg.d_model, heads=cfg.mia_heads, d_ff=cfg.mia_d_ff,
                iterations=cfg.iterations, dropout=cfg.mia_dropout,
                mode="self" if cfg.variant == "self_attention" else "mutual",
                order=cfg.mia_order, textual_layer_shortcut=cfg.mia_textual_layer_shortcut)

    def forward(self, batch: dict[str, Tensor], need_weights: bool = False) -> RegionEncoded:
        dtype = self.embed_regions[0].weight.dtype  # the parameters' (stores hand over float16)
        regions = self.embed_regions(batch["features"].to(dtype))  # (B, n, d)
        region_mask = batch["feature_mask"].bool()  # (B, n)
        if self.mia is None:
            return RegionEncoded(regions, region_mask, None)
        n = regions.shape[1]
        ids, concept_mask = batch["concepts"].long(), batch["concept_mask"].bool()
        if ids.shape[1] < n:
            raise ValueError(
                f"batch has {ids.shape[1]} concepts per image but {n} regions; MIA aligns "
                f"position j of both, so extract at least k={n} concepts (concepts.k)")
        # The store lists concepts by descending probability: keep the top n, one per region.
        ids, concept_mask = ids[:, :n], concept_mask[:, :n]
        concepts = self.concept_proj(self.embed_concepts(ids))  # type: ignore[misc]  (B, n, d)
        out = self.mia(regions, concepts, region_mask, concept_mask, need_weights=need_weights)
        if self.variant == "mia_visual":
            return RegionEncoded(out.visual, region_mask, out)
        if self.variant == "mia_concepts":
            return RegionEncoded(out.concepts, concept_mask, out)
        # The fused position j is real when either of its parts is (MIA zeroes padded parts).
        return RegionEncoded(out.fused, torch.logical_or(region_mask, concept_mask), out)

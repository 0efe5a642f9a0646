"""The image side of a VQA model: region features, or MIA's semantic-grounded version of them.

The paper (section 2.3, Figure 3 right): "For VQA, MIA only substitutes the image
representations, and the question representations are preserved", and MIA's settings are "the
same for the two tasks". Its supplement, with the VQA details, is not available, so where MIA
sits is our choice, made as follows:

1. Regions: each 2048-d box feature is projected to MIA's width d = 512 by a weight-normed
   Linear + ReLU, the FC layer both VQA references use for every projection (``FCNet``).
   d = 512 rather than the baseline's hidden size (1024 / 1280) because the paper keeps one MIA
   setting for captioning and VQA, and the captioning setting is d = 512 (authors' code).
2. Concepts: the region store's top-36 concept ids (36 = the number of boxes, as the paper
   requires) are embedded with a table of their OWN over the concept store's ``concept_words``
   (300-d, initialised from GloVe 6B when a GloVe file is given, like the question words), then
   projected to d by a weight-normed Linear. Not tied to the question word embedding: the paper
   keeps the question path untouched, and a shared table would let the concept side move the
   question encoder's parameters; besides, the MIL concept words are caption words, many of which
   no question uses. GloVe initialisation puts both vocabularies in one semantic space anyway.
3. MIA (8 heads, FFN 2048, N = 2, dropout 0.1) with an explicit box mask and concept mask.
4. The baseline then consumes MIA's output (B, 36, 512) in place of the (B, 36, 2048) features:
   its own projections of the image (Up-Down's attention and v_net, BAN's bilinear attention
   and pooling) read 512 inputs instead of 2048. Position j is still box j, so BAN's counting
   module keeps using the boxes; the output's mask is the BOX mask (a padded box never becomes
   attendable because its concept slot is real).

Variants: ``mia``/``mia_n{k}``/``self_attention`` use LayerNorm(I_N + T_N) (Eq. 7),
``mia_visual`` I_N, ``mia_concepts`` T_N.

Box counts: a region store may hold a different number of real boxes per image (BAN's
reference trains on the adaptive 10-100 boxes; ``num_boxes`` with zero padding, masked by the
loaders). Every model masks the padded boxes; MIA keeps as many top concepts as the image has
real boxes, so the concept store must hold at least the store's maximum (``concepts.k``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mia.attention import MIAOutput, MutualIterativeAttention
from mia.vqa.config import VQAModelConfig
from mia.vqa.layers import WeightNormLinear, fc


@dataclass
class EncodedRegions:
    """What the baseline attends to: ``features`` (B, m, d), box ``mask`` (B, m) True = real,
    and MIA's full output for the MIA variants."""

    features: Tensor
    mask: Tensor
    mia: MIAOutput | None


class RegionEncoder(nn.Module):
    """Identity for ``base``; projection + concept embedding + MIA for the MIA variants."""

    def __init__(self, cfg: VQAModelConfig, n_concept_words: int | None = None) -> None:
        super().__init__()
        self.variant = cfg.variant
        self.out_dim = cfg.mia_d_model if cfg.uses_mia else cfg.feature_dim
        self.mia: MutualIterativeAttention | None = None
        if not cfg.uses_mia:
            return
        if not n_concept_words:
            raise ValueError(f"variant {cfg.variant!r} needs the concept vocabulary size "
                             "(n_concept_words = len(concept_words) of the concept store)")
        self.region_proj = fc(cfg.feature_dim, cfg.mia_d_model)
        self.concept_embedding = nn.Embedding(n_concept_words, cfg.concept_embed_dim)
        self.concept_proj = WeightNormLinear(cfg.concept_embed_dim, cfg.mia_d_model)
        self.mia = MutualIterativeAttention(
            d_model=cfg.mia_d_model, heads=cfg.mia_heads, d_ff=cfg.mia_d_ff,
            iterations=cfg.iterations, dropout=cfg.mia_dropout,
            mode="self" if cfg.variant == "self_attention" else "mutual",
            order=cfg.mia_order, textual_layer_shortcut=cfg.mia_textual_layer_shortcut)

    def forward(self, batch: dict[str, Tensor], dtype: torch.dtype = torch.float32,
                need_weights: bool = False) -> EncodedRegions:
        """``dtype``: the model's parameter dtype (stores may hand over float16 features)."""
        features = batch["features"].to(dtype)  # (B, m, C)
        mask = batch["feature_mask"].bool()  # (B, m)
        if self.mia is None:
            return EncodedRegions(features, mask, None)
        if "concepts" not in batch:
            raise ValueError(f"variant {self.variant!r} needs 'concepts' in the batch: build "
                             "VQAData with a concept store (concepts_h5=...)")
        m = features.shape[1]
        ids, concept_mask = batch["concepts"].long(), batch["concept_mask"].bool()
        if ids.shape[1] < m:
            raise ValueError(f"batch has {ids.shape[1]} concepts per image but {m} boxes; MIA "
                             f"aligns position j of both, so extract at least k={m} concepts")
        # The top concepts, as many as the image has real boxes (the paper keeps n concepts for
        # n features): all m for a fixed-36 store, 10..100 per image for an adaptive one.
        ids, concept_mask = ids[:, :m], concept_mask[:, :m] & mask
        visual = self.region_proj(features)  # (B, m, d)
        concepts = self.concept_proj(self.concept_embedding(ids))  # (B, m, d)
        out = self.mia(visual, concepts, mask, concept_mask, need_weights=need_weights)
        refined = {"mia_visual": out.visual, "mia_concepts": out.concepts}.get(self.variant,
                                                                                out.fused)
        # Padded boxes stay padded whatever their concept slot holds (see the module docstring).
        return EncodedRegions(refined.masked_fill(~mask[..., None], 0.0), mask, out)


"""Typed configuration of one VQA model (Table 3), built from the YAML config.

``from_dict`` refuses unknown keys, as every config of the project does (a misspelt key would
silently train with a default). Defaults are the references' paper sizes: Up-Down
(hengyuan-hu/bottom-up-attention-vqa ``main.py``: num_hid 1024) and BAN (jnhwkim/ban-vqa
``main.py``: num_hid 1280, gamma 8 glimpses; ``bc.py``: k = 3; counter of 10 objects). MIA's
settings are the paper's, "the same for the two tasks" (section 3): d = 512, 8 heads, FFN 2048,
dropout 0.1, N = 2; everything else about MIA is ``MutualIterativeAttention``'s default, which
follows the paper's text (the authors released captioning code only, so for VQA there is no
released variant to follow instead).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from mia import variants
from mia.config import from_dict

#: Baselines of Table 3; ``mia.vqa.models.MODELS`` holds a builder for each.
BASELINES = ("updown", "ban")
#: Paper hidden sizes when ``hidden`` is not given.
DEFAULT_HIDDEN = {"updown": 1024, "ban": 1280}


@dataclass
class VQAModelConfig:
    """One VQA model: baseline, image-side variant and sizes.

    Variants (what replaces the region features; the question path never changes):
    ``base`` (the features themselves), ``mia`` (LayerNorm(I_N + T_N), Eq. 7), ``mia_n{k}``
    (the same with N = k), ``self_attention`` (section 3.3: each modality attends to itself),
    ``mia_visual`` (I_N only) and ``mia_concepts`` (T_N only). All of ``mia.variants.VARIANTS``
    are meaningful here because each one only decides which
    (B, 36, d) tensor stands in for the regions, position j still belonging to box j; Table 3
    itself runs ``base`` and ``mia``.

    ``dropout`` is Up-Down's attention dropout (NewAttention, 0.2) and BAN's dropout before
    each FC layer (FCNet, 0.2); ``attention_dropout`` is BAN's dropout on the visual side of the
    bilinear attention logits (BCNet, 0.5); ``classifier_dropout`` both classifiers' (0.5).

    Where the references' question side differs from a masked one (docs/RECIPE.md, VQA):
    ``question_pads``: ``reference`` (Up-Down: pads in front, the GRU's last step; BAN: pad
    positions in the attention and the final sum) or ``masked`` (:mod:`mia.vqa.question`);
    ``tfidf_embedding``: BAN's ``--op c``, a second question embedding initialised from the
    store's co-occurrence matrix (``preprocess.vqa.tfidf_questions``), the GRU reading 600-d.
    """

    baseline: str = "updown"
    variant: str = "base"
    feature_dim: int = 2048  # C of the region store
    embed_dim: int = 300  # question word embedding (GloVe 6B 300d)
    hidden: int | None = None  # None: the baseline's paper size (Up-Down 1024, BAN 1280)
    glimpses: int = 8  # BAN
    ban_rank: int = 3  # BAN: k of the low-rank bilinear attention (BCNet k)
    counter_objects: int = 10  # BAN: boxes the counting module considers
    dropout: float = 0.2
    attention_dropout: float = 0.5
    classifier_dropout: float = 0.5
    concept_embed_dim: int = 300  # concept word embedding (GloVe-initialisable), MIA variants
    mia_d_model: int = 512
    mia_heads: int = 8
    mia_d_ff: int = 2048
    mia_iterations: int = 2
    mia_dropout: float = 0.1
    mia_order: Literal["visual_first", "concepts_first"] = "visual_first"
    mia_textual_layer_shortcut: bool = True
    question_pads: Literal["masked", "reference"] = "masked"
    tfidf_embedding: bool = False  # BAN's --op c (its default)

    def __post_init__(self) -> None:
        if self.baseline not in BASELINES:
            raise ValueError(f"vqa.model.baseline: unknown baseline {self.baseline!r}; expected "
                             f"one of {list(BASELINES)}")
        variants.check_variant(self.variant, "vqa.model.variant")
        if self.hidden is None:
            self.hidden = DEFAULT_HIDDEN[self.baseline]
        for name in ("feature_dim", "embed_dim", "hidden", "glimpses", "ban_rank",
                     "counter_objects", "concept_embed_dim", "mia_d_model", "mia_heads",
                     "mia_d_ff", "mia_iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"vqa.model.{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("dropout", "attention_dropout", "classifier_dropout", "mia_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"vqa.model.{name}: must be in [0, 1), got "
                                 f"{getattr(self, name)}")
        if self.question_pads not in ("masked", "reference"):
            raise ValueError(f"vqa.model.question_pads: {self.question_pads!r} is not 'masked' "
                             "or 'reference'")
        if self.uses_mia and self.mia_d_model % self.mia_heads:
            raise ValueError(f"vqa.model.mia_heads: MIA's {self.mia_heads} heads must divide its "
                             f"width vqa.model.mia_d_model={self.mia_d_model}")

    @property
    def uses_mia(self) -> bool:
        return self.variant != "base"

    @property
    def iterations(self) -> int:
        """MIA's N for this variant (``mia_n3`` -> 3, otherwise ``mia_iterations``)."""
        return variants.iterations(self.variant, self.mia_iterations)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "vqa.model") -> VQAModelConfig:
        return from_dict(cls, values, where)

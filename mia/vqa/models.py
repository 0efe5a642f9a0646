"""VQA models of Table 3 and the registry that builds them by baseline name.

A model is question encoder + region encoder (which carries MIA for the MIA variants, see
:mod:`mia.vqa.image`) + the baseline's answerer (:mod:`mia.vqa.updown`, :mod:`mia.vqa.ban`).
A training step on a ``VQAData`` batch is::

    logits = model(batch)                        # (B, n_answers)
    loss = model.loss(logits, batch["target"])   # BCE-with-logits x n_answers, as the references
    score = soft_accuracy(logits, batch["target"])  # (B,) VQA soft score of the argmax

``model.run(batch, need_weights=True)`` returns everything (attention maps, question states,
MIA's per-iteration attention) for analysis.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from mia.dtypes import at_least_float32
from mia.vqa.ban import BANAnswerer
from mia.vqa.config import BASELINES, VQAModelConfig
from mia.vqa.glove import init_embedding, read_glove
from mia.vqa.image import EncodedRegions, RegionEncoder
from mia.vqa.question import QuestionEncoder, QuestionStates
from mia.vqa.updown import UpDownAnswerer

#: ``(cfg, v_dim, n_answers) -> answerer``; the answerer maps (question states, region features,
#: box mask, boxes) to (logits, attention).
AnswererBuilder = Callable[[VQAModelConfig, int, int], nn.Module]


def _updown(cfg: VQAModelConfig, v_dim: int, n_answers: int) -> nn.Module:
    return UpDownAnswerer(v_dim, cfg.hidden, n_answers, cfg.dropout,  # type: ignore[arg-type]
                          cfg.classifier_dropout)


def _ban(cfg: VQAModelConfig, v_dim: int, n_answers: int) -> nn.Module:
    return BANAnswerer(v_dim, cfg.hidden, n_answers, cfg.glimpses,  # type: ignore[arg-type]
                       cfg.ban_rank, cfg.counter_objects, cfg.dropout, cfg.attention_dropout,
                       cfg.classifier_dropout)


MODELS: dict[str, AnswererBuilder] = {"updown": _updown, "ban": _ban}
assert tuple(MODELS) == BASELINES, "mia.vqa.config.BASELINES and MODELS must list the same names"


def vqa_loss(logits: Tensor, target: Tensor) -> Tensor:
    """``instance_bce_with_logits`` of both references: the mean BCE over (question, answer)
    entries times the number of answers, i.e. a sum over answers averaged over questions."""
    if logits.dim() != 2 or logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must "
                         "both be (B, n_answers)")
    return F.binary_cross_entropy_with_logits(
        at_least_float32(logits), target.to(at_least_float32(logits).dtype)) * target.shape[1]


def soft_accuracy(logits: Tensor, target: Tensor) -> Tensor:
    """``compute_score_with_logits``: the soft score (0, .3, .6, .9, 1) of each question's
    argmax answer, (B,). Its mean is the references' training "score"; the official accuracy
    is :mod:`mia.evaluation.vqa`'s."""
    return target.gather(1, logits.argmax(dim=1, keepdim=True)).squeeze(1)


@dataclass
class VQAOutput:
    """``logits`` (B, n_answers); ``attention``: Up-Down (B, m), BAN (B, glimpses, m, L)."""

    logits: Tensor
    attention: Tensor
    question: QuestionStates
    image: EncodedRegions


class VQAModel(nn.Module):
    """Question encoder + region encoder (+ MIA) + a baseline answerer."""

    def __init__(self, cfg: VQAModelConfig, question: QuestionEncoder, image: RegionEncoder,
                 answerer: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        self.question = question
        self.image = image
        self.answerer = answerer

    def run(self, batch: dict[str, Tensor], need_weights: bool = False) -> VQAOutput:
        """Every intermediate of one batch; ``need_weights`` also keeps MIA's attention."""
        question = self.question(batch["questions"])  # never sees the image side
        dtype = self.question.embedding.weight.dtype  # the parameters', whatever autocast does
        image = self.image(batch, dtype, need_weights=need_weights)
        logits, attention = self.answerer(question, image.features, image.mask,
                                          batch.get("boxes"))
        return VQAOutput(logits, attention, question, image)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Answer logits (B, n_answers) of a ``VQAData`` batch."""
        return self.run(batch).logits

    @staticmethod
    def loss(logits: Tensor, target: Tensor) -> Tensor:
        return vqa_loss(logits, target)

    def init_word_vectors(self, glove_path: str | os.PathLike, question_vocab: Sequence[str],
                          concept_words: Sequence[str] | None = None) -> dict[str, int]:
        """Initialise the question (and, for MIA variants, concept) embeddings from GloVe.

        Reads the file once for both vocabularies; words GloVe lacks keep their random
        initialisation. Returns how many rows of each were found, to be logged.
        """
        has_concepts = self.image.mia is not None and concept_words is not None
        words = list(question_vocab) + (list(concept_words) if has_concepts else [])  # type: ignore
        match = read_glove(glove_path, list(dict.fromkeys(words)),  # each word once
                           self.question.embedding.embedding_dim)
        found = {"question_words": init_embedding(self.question.embedding,
                                                  match.subset(question_vocab),
                                                  "question embedding"),
                 "question_vocab": len(question_vocab)}
        if has_concepts:
            found["concept_words"] = init_embedding(self.image.concept_embedding,
                                                    match.subset(concept_words),  # type: ignore
                                                    "concept embedding")
            found["concept_vocab"] = len(concept_words)  # type: ignore[arg-type]
        return found


def build_vqa_model(cfg: VQAModelConfig, n_question_words: int, n_answers: int,
                    n_concept_words: int | None = None) -> VQAModel:
    """The model of ``cfg.baseline`` and ``cfg.variant``.

    ``n_question_words``: ``len(question_vocab)`` of ``vqa.h5``; ``n_answers``:
    ``len(answer_vocab)``; ``n_concept_words``: ``len(concept_words)`` of the concept store
    (needed by the MIA variants only).
    """
    if cfg.baseline not in MODELS:
        raise ValueError(f"unknown VQA baseline {cfg.baseline!r}; expected one of {list(MODELS)}")
    reference_pads = cfg.question_pads == "reference"
    question = QuestionEncoder(n_question_words, cfg.embed_dim, cfg.hidden,  # type: ignore
                               tfidf=cfg.tfidf_embedding,
                               front=reference_pads and cfg.baseline == "updown",
                               mask_pads=not (reference_pads and cfg.baseline == "ban"))
    image = RegionEncoder(cfg, n_concept_words)
    answerer = MODELS[cfg.baseline](cfg, image.out_dim, n_answers)
    return VQAModel(cfg, question, image, answerer)

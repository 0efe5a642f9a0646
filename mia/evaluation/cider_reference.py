"""pycocoevalcap's own CIDEr-D scorer, used as the reference for :mod:`mia.evaluation.cider`.

pycocoevalcap's ``Cider.compute_score`` takes one candidate per image and the document
frequencies of exactly the references it scores. SCST needs several candidates per image and the
document frequencies of the training set (ruotianluo's CIDEr-D: df and the log document count of
that set). This module gets both from pycocoevalcap's unmodified ``CiderScorer`` arithmetic, so
the tests and the benchmark compare the fast scorer against coco-caption's code in every mode:

* the document frequencies come from ``CiderScorer.compute_doc_freq`` run on the df set;
* a subclass installs them instead of recomputing them from the scored pairs, and pins
  ``ref_len`` (the log document count) that ``compute_cider`` would set from the pair count.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from pycocoevalcap.cider.cider_scorer import CiderScorer


def pycocoevalcap_document_frequency(references: Mapping[Hashable, Sequence[str]]
                                     ) -> tuple[dict[tuple[str, ...], float], float]:
    """``(df, log number of images)`` exactly as pycocoevalcap computes them."""
    scorer = CiderScorer()
    for refs in references.values():
        scorer.cook_append(None, list(refs))
    scorer.compute_doc_freq()
    return dict(scorer.document_frequency), float(np.log(float(len(scorer.crefs))))


class _FixedDocumentFrequency(CiderScorer):
    """``CiderScorer`` whose df and log document count are given, not taken from its pairs."""

    def __init__(self, df: Mapping[tuple[str, ...], float], log_docs: float) -> None:
        self._fixed_df = df
        self._fixed_log_docs = log_docs
        super().__init__()

    # compute_cider assigns ref_len = log(len(crefs)); the property keeps the given value.
    @property
    def ref_len(self) -> float:  # type: ignore[override]
        return self._fixed_log_docs

    @ref_len.setter
    def ref_len(self, value: float | None) -> None:
        pass

    def compute_doc_freq(self) -> None:
        self.document_frequency = defaultdict(float, self._fixed_df)


def pycocoevalcap_cider_d(pairs: Sequence[tuple[str, Sequence[str]]],
                          df: Mapping[tuple[str, ...], float], log_docs: float) -> np.ndarray:
    """CIDEr-D of each ``(candidate, references)`` pair by pycocoevalcap's ``compute_cider``."""
    scorer = _FixedDocumentFrequency(df, log_docs)
    for candidate, refs in pairs:
        scorer.cook_append(candidate, list(refs))
    scorer.compute_doc_freq()
    return np.asarray(scorer.compute_cider(), dtype=np.float64)

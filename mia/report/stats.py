"""Confidence intervals for MIA's gain: a paired bootstrap over test items, and over seeds.

The question the report answers is "how sure are we that ``w/ MIA`` beats its baseline on this
test set, given how much the score moves from image to image and from training seed to seed?".

Scheme (one resample):

1. **Seeds** (only where a run has several): draw as many seeds as the run has, with
   replacement, independently for the baseline and for the MIA run. The two runs' seeds are not
   paired: seed 123 of the baseline and seed 123 of the MIA run train different models.
2. **Items** (test images for captioning, questions for VQA): draw ``n`` item indices with
   replacement, the SAME indices for both runs. This is the pairing: an image that is hard for
   the baseline is usually hard for the MIA model too, and resampling it on both sides at once
   cancels that shared difficulty out of the gain instead of counting it as noise.
3. The statistic: mean over the drawn items of (mean over the drawn MIA seeds minus mean over the
   drawn baseline seeds) of the per-item score.

The interval is the percentile interval of that statistic over ``n_resamples`` resamples; the
point estimate is the statistic on the data itself (mean over seeds and items). It is exactly the
difference of two corpus scores whenever the corpus score is the mean of the per-item scores:
CIDEr-D, ROUGE-L, SPICE and VQA accuracy are; BLEU is not (it pools n-gram counts over the corpus
before taking a geometric mean), so the report leaves BLEU out of the intervals.

Everything is vectorised with numpy in chunks of resamples, and the random stream depends only on
``seed`` (not on the chunk size a machine could afford), so an interval is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Items x resamples per numpy chunk: small enough that the gathers stay in the CPU caches
#: (100 resamples of 5,000 images at a time), which makes them several times faster.
CHUNK_ELEMENTS = 500_000


@dataclass(frozen=True)
class Interval:
    """A gain (MIA minus baseline) with its bootstrap confidence interval."""

    estimate: float
    low: float
    high: float
    confidence: float
    n_items: int
    n_base_seeds: int
    n_mia_seeds: int
    n_resamples: int
    #: Two-sided bootstrap p-value of "no gain": twice the smaller share of resamples on either
    #: side of zero (each share counted as (k + 1) / (R + 1), so never 0). It agrees with the
    #: percentile interval: the interval excludes zero iff p < 1 - confidence (up to ties).
    p_value: float = 1.0

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    @property
    def direction(self) -> str:
        """``better`` / ``worse`` when the interval excludes zero on that side, else ``neutral``."""
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "neutral"

    def verdict(self) -> str:
        """The interval in words: does it rule out "no gain"?"""
        if not self.excludes_zero:
            return "the interval is consistent with no gain"
        if self.estimate > 0:
            return "the interval excludes zero"
        return "the interval excludes zero (MIA is worse)"

    def sentence(self, metric: str, digits: int = 1) -> str:
        """``MIA +3.1 CIDEr [95% CI 1.2, 5.0]: the interval excludes zero``."""
        pct = f"{100 * self.confidence:g}%"
        return (f"MIA {self.estimate:+.{digits}f} {metric} [{pct} CI {self.low:.{digits}f}, "
                f"{self.high:.{digits}f}]: {self.verdict()}")


def _as_seeds_by_items(scores: np.ndarray, name: str) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[None, :]
    if scores.ndim != 2 or scores.shape[0] < 1 or scores.shape[1] < 1:
        raise ValueError(f"{name}: expected per-item scores shaped (items,) or (seeds, items), "
                         f"got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError(f"{name}: per-item scores must be finite (found NaN or inf)")
    return scores


def _chunk_size(n_items: int) -> int:
    """Resamples per chunk; a function of the data size only, so the random stream (and the
    interval) never depends on the machine."""
    return max(1, min(1000, CHUNK_ELEMENTS // n_items))


def _seed_weights(rng: np.random.Generator, n_seeds: int, size: int) -> np.ndarray:
    """(size, n_seeds) weights of a with-replacement draw of ``n_seeds`` seeds (rows sum to 1)."""
    if n_seeds == 1:
        return np.ones((size, 1))
    return rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=size) / n_seeds


def bootstrap_gain(base: np.ndarray, mia: np.ndarray, *, n_resamples: int = 10_000,
                   confidence: float = 0.95, seed: int | Sequence[int] = 0) -> Interval:
    """Paired bootstrap interval of ``mean(mia) - mean(base)``.

    Args:
        base, mia: per-item scores, ``(items,)`` for one seed or ``(seeds, items)``; column ``j``
            of both must be the same test item (image or question).
        n_resamples: bootstrap resamples (10,000 for the report).
        confidence: coverage of the percentile interval.
        seed: seeds the random stream (an int or a sequence of ints, as numpy's
            ``default_rng`` takes); the same seed gives the same interval.
    """
    base = _as_seeds_by_items(base, "base")
    mia = _as_seeds_by_items(mia, "mia")
    if base.shape[1] != mia.shape[1]:
        raise ValueError(f"base has {base.shape[1]} items and mia {mia.shape[1]}: a paired "
                         "bootstrap needs the scores of the same test items, in the same order")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    n = base.shape[1]
    rng = np.random.default_rng(seed)
    chunk = _chunk_size(n)
    stats = np.empty(n_resamples)
    if base.shape[0] == 1 and mia.shape[0] == 1:
        diff = mia[0] - base[0]  # (n,)
        for start in range(0, n_resamples, chunk):
            size = min(chunk, n_resamples - start)
            items = rng.integers(0, n, size=(size, n), dtype=np.int32)  # (size, n)
            stats[start:start + size] = diff[items].mean(1)
    else:
        both = np.concatenate([mia, base])  # (S_m + S_b, n)
        for start in range(0, n_resamples, chunk):
            size = min(chunk, n_resamples - start)
            weights = np.concatenate([_seed_weights(rng, mia.shape[0], size),
                                      -_seed_weights(rng, base.shape[0], size)], axis=1)
            # (size, n): each item's gain under the drawn seeds. einsum, not BLAS: with an inner
            # dimension of a few seeds, OpenBLAS's thread start-up costs ten times the work.
            per_item = np.einsum("rs,sn->rn", weights, both, optimize=False)
            items = rng.integers(0, n, size=(size, n), dtype=np.int32)
            items += (np.arange(size, dtype=np.int32) * n)[:, None]  # rows of the flat array
            stats[start:start + size] = per_item.ravel()[items].mean(1)
    alpha = 1.0 - confidence
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    below = (np.count_nonzero(stats <= 0) + 1) / (n_resamples + 1)
    above = (np.count_nonzero(stats >= 0) + 1) / (n_resamples + 1)
    return Interval(estimate=float(mia.mean() - base.mean()), low=float(low), high=float(high),
                    confidence=confidence, n_items=n, n_base_seeds=base.shape[0],
                    n_mia_seeds=mia.shape[0], n_resamples=n_resamples,
                    p_value=float(min(1.0, 2 * min(below, above))))


def holm(p_values: Sequence[float], alpha: float) -> list[bool]:
    """Holm's step-down correction: which hypotheses are rejected with a family-wise error rate
    of ``alpha`` over all of ``p_values`` (sorted ascending, the i-th smallest is compared with
    ``alpha / (m - i)``, stopping at the first that is not below it)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    rejected = [False] * len(p_values)
    m = len(p_values)
    for rank, i in enumerate(order):
        if p_values[i] > alpha / (m - rank):
            break
        rejected[i] = True
    return rejected

"""The paired bootstrap of mia.report.stats: nominal coverage on synthetic scores with a known
gain, narrower intervals when per-item noise is shared (pairing), wider ones when seeds disagree,
and the same interval for the same seed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mia.report.stats import Interval, bootstrap_gain


def synthetic(rng: np.random.Generator, n: int, gain: float, shared: float = 10.0,
              own: float = 2.0, seeds: int = 1, seed_sd: float = 0.0
              ) -> tuple[np.ndarray, np.ndarray]:
    """Per-item scores (seeds, n): a shared item difficulty (sd ``shared``) plus independent noise
    (sd ``own``) per run, plus a per-seed offset (sd ``seed_sd``); MIA is better by ``gain`` in
    expectation."""
    difficulty = rng.normal(0.0, shared, size=n)
    base = 50 + difficulty + rng.normal(0, own, (seeds, n)) + rng.normal(0, seed_sd, (seeds, 1))
    mia = (50 + gain + difficulty + rng.normal(0, own, (seeds, n))
           + rng.normal(0, seed_sd, (seeds, 1)))
    return base, mia


def unpaired_interval(base: np.ndarray, mia: np.ndarray, n_resamples: int, seed: int
                      ) -> tuple[float, float]:
    """The same percentile interval, resampling the two runs' items independently (no pairing)."""
    rng = np.random.default_rng(seed)
    n = base.size
    b = base[rng.integers(0, n, (n_resamples, n))].mean(1)
    m = mia[rng.integers(0, n, (n_resamples, n))].mean(1)
    low, high = np.quantile(m - b, [0.025, 0.975])
    return float(low), float(high)


def test_interval_covers_the_true_gain_at_about_the_nominal_rate() -> None:
    """200 synthetic test sets with a true gain of 1.5: a 95% interval should contain it in about
    190 of them. Binomial(200, 0.95) has sd 3.1; accept 181..198 (about +-3 sd)."""
    rng = np.random.default_rng(20191208)
    true_gain, repetitions, covered = 1.5, 200, 0
    for rep in range(repetitions):
        base, mia = synthetic(rng, n=400, gain=true_gain)
        # The population gain is 1.5 exactly; the sample's own gain varies around it.
        ci = bootstrap_gain(base, mia, n_resamples=1000, seed=rep)
        covered += ci.low <= true_gain <= ci.high
    assert 181 <= covered <= 198, f"covered {covered}/{repetitions}"


def test_interval_width_matches_the_normal_theory() -> None:
    """With independent per-item noise of sd 2 on each side, the item-level gain has sd 2*sqrt(2)
    and the 95% interval of its mean over n items is about 2 * 1.96 * 2.83 / sqrt(n) wide."""
    rng = np.random.default_rng(1)
    n = 2000
    base, mia = synthetic(rng, n=n, gain=1.0)
    ci = bootstrap_gain(base, mia, n_resamples=4000, seed=0)
    expected = 2 * 1.96 * 2 * math.sqrt(2) / math.sqrt(n)
    assert ci.high - ci.low == pytest.approx(expected, rel=0.12)
    assert ci.estimate == pytest.approx(float(mia.mean() - base.mean()))
    assert ci.low < ci.estimate < ci.high


def test_pairing_removes_the_shared_item_difficulty() -> None:
    """Item difficulty (sd 10) shared by both runs dwarfs the gain; pairing cancels it, so the
    paired interval is several times narrower than an unpaired one and excludes zero."""
    rng = np.random.default_rng(2)
    base, mia = synthetic(rng, n=1000, gain=0.5, shared=10.0, own=2.0)
    paired = bootstrap_gain(base, mia, n_resamples=2000, seed=3)
    low, high = unpaired_interval(base[0], mia[0], 2000, seed=3)
    assert (high - low) > 3 * (paired.high - paired.low)
    assert paired.excludes_zero and not (low > 0 or high < 0)


def test_same_seed_same_interval_other_seed_other_interval() -> None:
    rng = np.random.default_rng(4)
    base, mia = synthetic(rng, n=300, gain=0.5, seeds=3, seed_sd=1.0)
    a = bootstrap_gain(base, mia, n_resamples=500, seed=7)
    b = bootstrap_gain(base, mia, n_resamples=500, seed=7)
    c = bootstrap_gain(base, mia, n_resamples=500, seed=8)
    assert a == b
    assert (a.low, a.high) != (c.low, c.high)


def test_seed_to_seed_spread_widens_the_interval() -> None:
    """Three seeds per run: when seeds disagree (a per-seed offset of sd 2), resampling seeds
    widens the interval; with identical seeds it matches the single-seed interval's width."""
    rng = np.random.default_rng(5)
    base, mia = synthetic(rng, n=1000, gain=1.0, seeds=3, seed_sd=0.0)
    offsets_b = np.array([[-2.0], [0.0], [2.0]])
    offsets_m = np.array([[1.5], [-2.5], [1.0]])
    calm = bootstrap_gain(base, mia, n_resamples=2000, seed=0)
    noisy = bootstrap_gain(base + offsets_b, mia + offsets_m, n_resamples=2000, seed=0)
    assert noisy.high - noisy.low > 2 * (calm.high - calm.low)
    # Identical seeds: the seed draw changes nothing, the item draw is as for one seed.
    one = bootstrap_gain(base[:1], mia[:1], n_resamples=2000, seed=0)
    same = bootstrap_gain(np.repeat(base[:1], 3, 0), np.repeat(mia[:1], 3, 0),
                          n_resamples=2000, seed=0)
    assert same.high - same.low == pytest.approx(one.high - one.low, rel=0.1)
    assert (noisy.n_base_seeds, noisy.n_mia_seeds, noisy.n_items) == (3, 3, 1000)


def test_sentences_say_whether_zero_is_excluded() -> None:
    kw = dict(confidence=0.95, n_items=5000, n_base_seeds=1, n_mia_seeds=1, n_resamples=10000)
    gain = Interval(estimate=3.14, low=1.2, high=5.0, **kw)
    assert gain.sentence("CIDEr") == ("MIA +3.1 CIDEr [95% CI 1.2, 5.0]: the interval excludes "
                                      "zero")
    unsure = Interval(estimate=0.4, low=-0.3, high=1.1, **kw)
    assert unsure.sentence("CIDEr").endswith("the interval is consistent with no gain")
    worse = Interval(estimate=-2.0, low=-3.0, high=-1.0, **kw)
    assert worse.verdict() == "the interval excludes zero (MIA is worse)"


def test_inputs_must_be_the_same_items() -> None:
    with pytest.raises(ValueError, match="same test items"):
        bootstrap_gain(np.zeros(10), np.zeros(11))
    with pytest.raises(ValueError, match="finite"):
        bootstrap_gain(np.array([1.0, np.nan]), np.zeros(2))

"""MIA's gain over each baseline, with a paired-bootstrap confidence interval and a verdict.

For every baseline with both a ``base`` and a ``mia`` run, per metric:

* captioning: CIDEr, METEOR, ROUGE-L and SPICE get an interval from the per-image scores
  (``--per-image`` files). BLEU-4 gets none, by decision: BLEU is a corpus-level statistic (clipped
  n-gram counts are pooled over all images, then a geometric mean and a brevity penalty are
  taken), so the mean of per-image BLEU is a different, much noisier quantity, and recomputing
  corpus BLEU per resample would need every image's tokenised candidate and references, which
  the report does not read. The corpus difference is shown; the interval is left out, and the
  report says why. (METEOR's corpus score also pools its matches, so its interval is on the mean
  per-image METEOR, which the report notes.)
* VQA: overall accuracy over every question and Number accuracy over the Number questions, from
  ``perQuestion`` (and each question's answer type).

The scheme (paired over items, and over seeds where a run has several) is that of
:mod:`mia.report.stats`.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from mia.report.paper import PaperResults
from mia.report.results import RunResult
from mia.report.stats import Interval, bootstrap_gain, holm

CAPTION_GAIN_METRICS = ("CIDEr", "Bleu_4", "METEOR", "ROUGE_L", "SPICE")
VQA_GAIN_METRICS = ("overall", "number")
BLEU_NOTE = ("BLEU is corpus-level (n-gram counts pooled over images, then a geometric mean and "
             "brevity penalty), so it has no per-image mean to resample; interval left out")
METEOR_NOTE = ("interval on the mean per-image METEOR gain (coco-caption's corpus METEOR pools "
               "matches, so the point estimate shown, the difference of the tables' corpus "
               "scores, is not the interval's centre)")


@dataclass(frozen=True)
class Gain:
    """MIA minus baseline on one metric, on the paper's scale."""

    baseline: str  # task/baseline
    label: str  # "Visual Attention"
    metric: str
    header: str  # "CIDEr", "Number"
    corpus: float | None  # difference of the tables' numbers (mean over seeds)
    interval: Interval | None
    note: str | None = None  # why there is no interval, or how to read it
    flags: tuple[str, ...] = ()  # constant predictions behind either run's number
    holm: bool = False  # still excludes zero after Holm's correction over the page's intervals

    @property
    def point(self) -> float | None:
        """THE point estimate of this claim, shown everywhere: the difference of the numbers
        the tables print (the interval's own estimate differs only for METEOR, see its note)."""
        if self.corpus is not None:
            return self.corpus
        return None if self.interval is None else self.interval.estimate

    @property
    def direction(self) -> str:
        return "neutral" if self.interval is None else self.interval.direction

    def sentence(self) -> str:
        """``Visual Attention: MIA +3.10 CIDEr [95% CI 1.20, 5.00]: MIA better (the interval
        excludes zero)``."""
        if self.interval is not None and self.point is not None:
            i = self.interval
            words = {"better": "MIA better (the interval excludes zero)",
                     "worse": "MIA worse (the interval excludes zero)",
                     "neutral": "consistent with no gain"}[i.direction]
            if self.holm:
                words += ", also after Holm's correction"
            if self.flags:
                words += "; constant predictions, see the note"
            return (f"{self.label}: MIA {self.point:+.2f} {self.header} "
                    f"[{100 * i.confidence:g}% CI {i.low:.2f}, {i.high:.2f}]: {words}")
        if self.corpus is None:
            return (f"{self.label}: no {self.header} gain "
                    f"({self.note or 'missing for one of the two runs'})")
        return (f"{self.label}: MIA {self.corpus:+.2f} {self.header} (no interval: "
                f"{self.note})")


@dataclass(frozen=True)
class GainSettings:
    """``report.bootstrap`` of the config: resamples, confidence level, seed."""

    resamples: int = 10_000
    confidence: float = 0.95
    seed: int = 0


def _stream(seed: int, *names: str) -> list[int]:
    """A seed per interval: the config's seed and a stable hash of what is being resampled, so
    adding a run never changes another run's interval."""
    return [seed, *(zlib.crc32(n.encode()) for n in names)]


def _corpus(base: RunResult, mia: RunResult, metric: str) -> float | None:
    b, m = base.value(metric).mean, mia.value(metric).mean
    return None if b is None or m is None else m - b


def _interval(base: RunResult, mia: RunResult, metric: str, settings: GainSettings
              ) -> tuple[Interval | None, str | None]:
    try:
        b, m = base.per_item(metric), mia.per_item(metric)
    except ValueError as err:  # seeds scored on different items: say so, keep the report
        return None, str(err)
    if b is None or m is None:
        side = "baseline" if b is None else "MIA run"
        what = ("per-question scores with answer types" if base.task == "vqa" and
                metric != "overall" else "per-item scores")
        return None, f"no {what} for the {side}"
    if not np.array_equal(b[0], m[0]):
        return None, (f"per-item scores cover different items (baseline {len(b[0])}, MIA "
                      f"{len(m[0])}); evaluate both on the same split")
    seed = _stream(settings.seed, base.run, mia.run, metric)
    interval = bootstrap_gain(b[1], m[1], n_resamples=settings.resamples,
                              confidence=settings.confidence, seed=seed)
    return interval, METEOR_NOTE if metric == "METEOR" else None


def mia_gains(results: Mapping[str, RunResult], paper: PaperResults, settings: GainSettings,
              order: Sequence[str] = ()) -> list[Gain]:
    """Every baseline with a ``base`` and a ``mia`` run in ``results``, in the order their runs
    first appear in ``order`` (then the rest)."""
    runs = list(dict.fromkeys([*[r for r in order if r in results], *results]))
    baselines = list(dict.fromkeys("/".join(r.split("/")[:2]) for r in runs))
    gains = []
    for baseline in baselines:
        base, mia = results.get(f"{baseline}/base"), results.get(f"{baseline}/mia")
        if base is None or mia is None:
            continue
        metrics = VQA_GAIN_METRICS if base.task == "vqa" else CAPTION_GAIN_METRICS
        label = paper.names.get(baseline.split("/")[1], baseline.split("/")[1])
        for metric in metrics:
            corpus = _corpus(base, mia, metric)
            if metric.startswith("Bleu"):
                interval, note = None, BLEU_NOTE
            else:
                interval, note = _interval(base, mia, metric, settings)
            if corpus is None and interval is None:
                reason = (mia.value(metric).reason or base.value(metric).reason or "missing")
                note = f"{metric} not available ({reason})"
            flags = tuple(f"{name}: {flag}" for name, run in (("baseline", base), ("MIA", mia))
                          for flag in run.degenerate(metric))
            gains.append(Gain(baseline, label, metric, paper.header(metric), corpus, interval,
                              note, flags))
    return with_holm(gains, 1.0 - settings.confidence)


def with_holm(gains: Sequence[Gain], alpha: float) -> list[Gain]:
    """Mark the gains whose interval still excludes zero after Holm's correction over every
    interval of the page (the family is all of them: a reader scans them together)."""
    tested = [g for g in gains if g.interval is not None]
    rejected = holm([g.interval.p_value for g in tested], alpha)  # type: ignore[union-attr]
    keep = {id(g) for g, r in zip(tested, rejected, strict=True) if r}
    return [replace(g, holm=id(g) in keep) for g in gains]


def comparisons(gains: Sequence[Gain]) -> int:
    """How many intervals the page shows (the family of the correction)."""
    return sum(g.interval is not None for g in gains)



@dataclass(frozen=True)
class GainRow:
    baseline: str
    label: str
    cells: dict[str, Gain]  # metric -> gain
    resampled: str  # "5,000 images, seeds 3/3": what the intervals resample


@dataclass(frozen=True)
class GainTable:
    """Gains of one task laid out for the report: a row per baseline, a column per metric, and
    the notes the cells refer to (each distinct note once)."""

    task: str
    metrics: tuple[str, ...]
    headers: tuple[str, ...]
    rows: tuple[GainRow, ...]
    notes: tuple[tuple[str, str], ...]  # (marker, text)
    note_of: dict[tuple[str, str], str]  # (baseline, metric) -> marker


def _resampled(task: str, cells: dict[str, Gain]) -> str:
    intervals = [g.interval for g in cells.values() if g.interval is not None]
    if not intervals:
        return "no per-item scores"
    first = intervals[0]
    unit = "questions" if task == "vqa" else "images"
    return f"{first.n_items:,} {unit}, seeds {first.n_base_seeds}/{first.n_mia_seeds}"


def gain_tables(gains: Sequence[Gain]) -> list[GainTable]:
    """Captioning and VQA gains as two tables (only the tasks present)."""
    out = []
    for task, metrics in (("captioning", CAPTION_GAIN_METRICS), ("vqa", VQA_GAIN_METRICS)):
        mine = [g for g in gains if g.baseline.startswith(f"{task}/")]
        if not mine:
            continue
        by_baseline: dict[str, tuple[str, dict[str, Gain]]] = {}
        for g in mine:
            by_baseline.setdefault(g.baseline, (g.label, {}))[1][g.metric] = g
        markers: dict[str, str] = {}
        note_of = {}
        for g in mine:
            texts = ([g.note] if g.note else []) + [f"{g.label}, {f}" for f in g.flags]
            note_of[(g.baseline, g.metric)] = ",".join(
                markers.setdefault(t, "abcdefghijklmnopqrstuvwxyz"[len(markers) % 26])
                for t in texts)
            if not texts:
                del note_of[(g.baseline, g.metric)]
        headers = tuple(next(g.header for g in mine if g.metric == m) for m in metrics)
        rows = tuple(GainRow(b, label, cells, _resampled(task, cells))
                     for b, (label, cells) in by_baseline.items())
        out.append(GainTable(task, metrics, headers, rows,
                             tuple((mark, note) for note, mark in markers.items()), note_of))
    return out

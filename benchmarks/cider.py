"""Seconds of pycocoevalcap's CIDEr-D against ``mia.evaluation.cider.CiderD`` on the same input.

Cases:

(a) evaluation: 5,000 images x 5 references, one candidate each; document frequencies from those
    references (pycocoevalcap ``Cider.compute_score`` against ``CiderD(refs).score``, the
    scorer's construction included);
(b) SCST rewards: batches of 50 images x 5 samples against document frequencies of a larger
    reference set (20,000 images; computed once beforehand by each side and not timed).
    pycocoevalcap: its ``CiderScorer`` with those frequencies installed
    (:mod:`mia.evaluation.cider_reference`); ours: a ``CiderD`` built for the batch's references
    plus ``score_batch``; seconds per batch, averaged over the batches;
(c) as (b), but ours scores against one ``CiderD`` built beforehand over the whole reference set
    (the reuse a training loop can do); seconds per batch.

Captions are synthetic but shaped like COCO's: a 10,000-word vocabulary with Zipfian
frequencies, 8-16 words a sentence, and per image a few "content" words that its references and
candidates share (so scores land in COCO's range, not at zero). Seeded.

Run: ``python benchmarks/cider.py [--images 5000] [--df-images 20000] [--batches 10] [--seed 0]``
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pycocoevalcap.cider.cider import Cider

from mia.evaluation.cider import CiderD, DocumentFrequency
from mia.evaluation.cider_reference import pycocoevalcap_cider_d, pycocoevalcap_document_frequency


@dataclass(frozen=True)
class SyntheticCaptions:
    """Seeded generator of COCO-like captions: an image's content words depend only on its id,
    its sentences on (image id, stream), so references and candidates of an image share topic."""

    seed: int = 0
    vocab: int = 10_000
    zipf_exponent: float = 1.1
    content_words: int = 8
    content_rate: float = 0.35

    def make(self, image_ids: Sequence[int], per_image: int, stream: int
             ) -> dict[int, list[str]]:
        words = np.array([f"w{i}" for i in range(self.vocab)])
        cdf = np.cumsum(1.0 / np.arange(1, self.vocab + 1) ** self.zipf_exponent)
        cdf /= cdf[-1]
        out: dict[int, list[str]] = {}
        for image in image_ids:
            topic = np.random.default_rng((self.seed, image)).choice(
                self.vocab, size=self.content_words, replace=False)
            rng = np.random.default_rng((self.seed, image, stream))
            sentences = []
            for _ in range(per_image):
                length = int(rng.integers(8, 17))
                ids = np.minimum(np.searchsorted(cdf, rng.random(length)), self.vocab - 1)
                own = rng.random(length) < self.content_rate
                ids[own] = topic[rng.integers(0, self.content_words, size=int(own.sum()))]
                sentences.append(" ".join(words[ids]))
            out[int(image)] = sentences
        return out


def _row(case: str, theirs: float, ours: float, diff: float) -> str:
    return f"| {case} | {theirs:.4f} | {ours:.4f} | {theirs / ours:.1f}x | {diff:.1e} |"


def case_evaluation(gen: SyntheticCaptions, images: int) -> str:
    refs = gen.make(range(images), 5, stream=0)
    cands = {k: v[0] for k, v in gen.make(range(images), 1, stream=1).items()}
    t0 = time.perf_counter()
    _, theirs = Cider().compute_score(refs, {k: [c] for k, c in cands.items()})
    t1 = time.perf_counter()
    _, ours = CiderD(refs).score(cands)
    t2 = time.perf_counter()
    diff = float(np.max(np.abs(np.asarray(theirs) - np.array([ours[k] for k in refs]))))
    return _row(f"(a) {images:,} images x 5 refs, 1 candidate", t1 - t0, t2 - t1, diff)


def case_scst(gen: SyntheticCaptions, df_images: int, batches: int) -> list[str]:
    train = gen.make(range(df_images), 5, stream=0)
    df, log_docs = pycocoevalcap_document_frequency(train)
    ours_df = DocumentFrequency(train)
    whole = CiderD(train, document_frequency=ours_df)
    rng = np.random.default_rng(gen.seed)
    t_theirs = t_ours = t_reuse = 0.0
    diff = diff_reuse = 0.0
    keys_all = list(train)
    for b in range(batches):
        image_keys = [keys_all[i] for i in rng.choice(len(keys_all), size=50, replace=False)]
        samples = gen.make(image_keys, 5, stream=2 + b)
        keys = [k for k in image_keys for _ in range(5)]
        cands = [s for k in image_keys for s in samples[k]]
        batch_refs = {k: train[k] for k in image_keys}
        t0 = time.perf_counter()
        theirs = pycocoevalcap_cider_d([(c, train[k]) for k, c in zip(keys, cands, strict=True)],
                                       df, log_docs)
        t1 = time.perf_counter()
        ours = CiderD(batch_refs, document_frequency=ours_df).score_batch(keys, cands)
        t2 = time.perf_counter()
        reused = whole.score_batch(keys, cands)
        t3 = time.perf_counter()
        t_theirs, t_ours, t_reuse = t_theirs + t1 - t0, t_ours + t2 - t1, t_reuse + t3 - t2
        diff = max(diff, float(np.max(np.abs(ours - theirs))))
        diff_reuse = max(diff_reuse, float(np.max(np.abs(reused - theirs))))
    label = f"50 images x 5 samples, df of {df_images:,} images"
    return [_row(f"(b) {label}, per batch", t_theirs / batches, t_ours / batches, diff),
            _row(f"(c) {label}, scorer built once, per batch", t_theirs / batches,
                 t_reuse / batches, diff_reuse)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--df-images", type=int, default=20_000)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    gen = SyntheticCaptions(seed=args.seed)
    rows = [case_evaluation(gen, args.images), *case_scst(gen, args.df_images, args.batches)]
    print("| case | pycocoevalcap s | ours s | speed-up | max abs diff |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

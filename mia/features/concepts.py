"""Textual concepts: the multiple-instance-learning word detector of Fang et al. (CVPR 2015).

The paper's textual concepts are the top-k words of a concept extractor "trained on the MSCOCO
captioning dataset using Multiple Instance Learning". Following Fang et al.:

* vocabulary: the ``vocab_size`` (K = 1000) most frequent words of the training captions, as in
  Fang et al. (their 1000 words cover ~92% of word occurrences and include function words:
  determiners, prepositions, pronouns). ``stopwords`` can leave words out: a list, or
  ``"function_words"`` for :data:`STOPWORDS` (an option, off by default);
* labels: a word is present in an image if any of its (5) captions contains it;
* model: each of the n = 49 grid cells j of an image scores each word w with
  ``p_wj = sigmoid(f_j . v_w + b_w)`` (``f_j`` standardised grid features, optionally through a
  small learned ReLU projection, ``hidden_dim``); the image-level probability is the noisy-OR
  ``p_w = 1 - prod_j (1 - p_wj)``: the word is there if at least one cell shows it;
* training: binary cross-entropy on ``p_w``, Karpathy train split only, Adam, seeded.

The noisy-OR is computed in log space: ``log(1 - p_w) = -sum_j softplus(l_wj)``, which stays
finite where the product of 49 factors would underflow.

Quality on the val split goes into the store's attributes: mean AP over words (ranking val images
by ``p_w``) and precision@k (share of an image's top-k words found in its captions), each next to
the frequency-only baseline that predicts every image's words by their training frequency.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mia.data.karpathy import read_karpathy
from mia.data.store import StoreError, atomic_h5, open_store, read_attrs
from mia.io import atomic_path
from mia.progress import track
from mia.runtime import resolve_device

log = logging.getLogger(__name__)

#: Function words that ``stopwords: function_words`` leaves out of the concept vocabulary:
#: articles, the commonest prepositions, conjunctions, auxiliaries and pronouns. Not the default:
#: Fang et al.'s vocabulary keeps them (they are words a caption needs).
STOPWORDS: tuple[str, ...] = (
    "a", "an", "the", "of", "on", "in", "at", "to", "with", "and", "or", "is", "are", "was",
    "were", "be", "been", "being", "it", "its", "this", "that", "these", "those", "there",
    "their", "his", "her", "he", "she", "they", "them", "some", "for", "from", "by", "as",
    "into", "onto", "has", "have", "while", "who", "which", "what",
)
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ConceptConfig:
    """``features.concepts`` of the workflow config (``k`` per feature kind: 49 grid, 36 regions)."""

    vocab_size: int = 1000
    k: int = 49
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    hidden_dim: int = 0
    seed: int = 123
    device: str = "auto"
    max_memory_gb: float = 4.0
    progress: bool = True
    stopwords: tuple[str, ...] | str = ()

    def __post_init__(self) -> None:
        words = self.stopwords
        if isinstance(words, str):
            if words != "function_words":
                raise ValueError(f"features.concepts.stopwords: {words!r} is neither a list of "
                                 "words nor 'function_words'")
            words = STOPWORDS
        object.__setattr__(self, "stopwords", tuple(str(w) for w in words))
        for key in ("vocab_size", "k", "epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"features.concepts.{key} must be >= 1, got {getattr(self, key)}")
        if self.k > self.vocab_size:
            raise ValueError(f"features.concepts.k ({self.k}) exceeds vocab_size "
                             f"({self.vocab_size}): cannot keep more concepts than words")


# --------------------------------------------------------------------------- caption words


@dataclass(frozen=True)
class CaptionWords:
    """Tokenised captions and split per image: ``{image_id: [[tok, ...], ...]}``, ``{id: split}``
    with split in train/val/test (Karpathy's restval counted as train)."""

    tokens: Mapping[int, Sequence[Sequence[str]]]
    split: Mapping[int, str]


def caption_words_from_karpathy(path: str | os.PathLike) -> CaptionWords:
    images = read_karpathy(path)
    return CaptionWords({img.cocoid: [list(s.tokens) for s in img.sentences] for img in images},
                        {img.cocoid: img.store_split for img in images})


def caption_words_from_store(path: str | os.PathLike) -> CaptionWords:
    """Words of a ``captions`` store (vocabulary ids back to words; special tokens dropped)."""
    with open_store(path, "captions") as f:
        vocab = read_attrs(f)["vocab"]
        ids = f["image_ids"][()]
        split = f["split"][()]
        captions = f["captions"][()]
        index = f["caption_image_index"][()]
    words = np.asarray(vocab, dtype=object)
    tokens: dict[int, list[list[str]]] = {int(i): [] for i in ids}
    for row, image_row in zip(captions, index, strict=True):
        tokens[int(ids[image_row])].append([w for w in words[row[row > 3]]])  # 0-3: specials
    return CaptionWords(tokens, {int(i): SPLITS[s] for i, s in zip(ids, split, strict=True)})


def load_caption_words(path: str | os.PathLike) -> CaptionWords:
    """From ``dataset_coco.json`` (Karpathy) or ``captions.h5`` (the captions store)."""
    return (caption_words_from_karpathy(path) if str(path).endswith(".json")
            else caption_words_from_store(path))


def build_concept_vocabulary(words: CaptionWords, size: int,
                             stopwords: Sequence[str] = ()) -> list[str]:
    """The ``size`` most frequent training-caption words (ties alphabetical), ``stopwords`` out
    (none by default, as in Fang et al.); tokens that are not alphabetic never count."""
    stop = set(stopwords)
    counts = Counter(t for image_id, caps in words.tokens.items()
                     if words.split.get(image_id) == "train" for cap in caps for t in cap
                     if t not in stop and t.isalpha())
    vocab = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]]
    if len(vocab) < size:
        log.warning("concept vocabulary has only %d words (vocab_size %d)", len(vocab), size)
    return vocab


def word_presence(words: CaptionWords, image_ids: Sequence[int], vocab: Sequence[str]
                  ) -> np.ndarray:
    """(N, K) float32: 1 where any caption of image ``image_ids[i]`` contains ``vocab[k]``."""
    index = {w: k for k, w in enumerate(vocab)}
    out = np.zeros((len(image_ids), len(vocab)), dtype=np.float32)
    for i, image_id in enumerate(image_ids):
        for cap in words.tokens.get(int(image_id), ()):
            for t in cap:
                if t in index:
                    out[i, index[t]] = 1.0
    return out


# --------------------------------------------------------------------------- metrics


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Non-interpolated AP of ranking by ``scores``: sum over score thresholds of
    (recall gain) x precision. Tied scores form one threshold, so a constant score gives the
    positive rate (the convention of scikit-learn's ``average_precision_score``)."""
    labels = np.asarray(labels, dtype=np.float64)
    positives = labels.sum()
    if positives == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    s, y = np.asarray(scores, dtype=np.float64)[order], labels[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    tp = np.cumsum(y)[last_of_tie]
    ranked = np.flatnonzero(last_of_tie) + 1.0
    recall_gain = np.diff(np.r_[0.0, tp]) / positives
    return float((recall_gain * tp / ranked).sum())


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean of per-word AP (columns) over words with at least one positive image."""
    aps = [average_precision(scores[:, k], labels[:, k]) for k in range(labels.shape[1])
           if labels[:, k].any()]
    return float(np.mean(aps)) if aps else float("nan")


def precision_at_k(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Mean over images of the share of the k top-scored words present in the image's captions."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    hits = np.take_along_axis(np.asarray(labels, dtype=np.float64), top, axis=1)
    return float(hits.mean()) if len(labels) else float("nan")


# --------------------------------------------------------------------------- features


class GridFeatureTable:
    """Rows of a ``grid_features`` store as float32 tensors, in memory when small enough."""

    def __init__(self, path: str | os.PathLike, max_memory_gb: float) -> None:
        self.path = Path(path)
        self._file = open_store(self.path, "grid_features")
        self.image_ids = self._file["image_ids"][()]
        self._dataset = self._file["features"]
        self.shape = tuple(self._dataset.shape)  # (N, n, C)
        self._data = None
        if self._dataset.size * self._dataset.dtype.itemsize <= max_memory_gb * 1e9:
            self._data = self._dataset[()]
            self.close()

    def rows(self, rows: np.ndarray) -> torch.Tensor:
        """(B, n, C) float32 of store rows ``rows`` (any order)."""
        if self._data is not None:
            return torch.from_numpy(self._data[rows].astype(np.float32))
        unique, inverse = np.unique(rows, return_inverse=True)  # h5py wants increasing indices
        return torch.from_numpy(self._dataset[unique][inverse].astype(np.float32))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# --------------------------------------------------------------------------- model


class MILConceptDetector(nn.Module):
    """Per-cell word logits and their noisy-OR over cells (Fang et al., section 3.1)."""

    def __init__(self, in_dim: int, num_words: int, hidden_dim: int, mean: torch.Tensor,
                 std: torch.Tensor, prior: torch.Tensor, num_cells: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean)  # (C,) feature standardisation from train images
        self.register_buffer("std", std)
        self.project = (nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU())
                        if hidden_dim else nn.Identity())
        self.words = nn.Linear(hidden_dim or in_dim, num_words)
        # Start at the word priors: 1 - (1 - s)^n = prior  <=>  s = 1 - (1 - prior)^(1/n).
        cell = 1 - (1 - prior.clamp(1e-4, 1 - 1e-4)) ** (1.0 / num_cells)
        with torch.no_grad():
            self.words.bias.copy_(torch.logit(cell))
            self.words.weight.mul_(0.1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, n, C) features -> (B, n, K) per-cell logits."""
        return self.words(self.project((features - self.mean) / self.std))

    @staticmethod
    def log_not_present(logits: torch.Tensor) -> torch.Tensor:
        """(B, n, K) -> (B, K) ``log(1 - p_w) = sum_j log(1 - sigmoid(l_j))``."""
        return -F.softplus(logits).sum(dim=1)

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """(B, n, C) -> (B, K) image-level noisy-OR probabilities."""
        return -torch.expm1(self.log_not_present(self(features)))


def noisy_or_bce(log_not: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean BCE of ``p = 1 - exp(log_not)`` against 0/1 ``labels``, computed stably."""
    log_p = torch.log(-torch.expm1(log_not.clamp(max=-1e-7)))
    return -(labels * log_p + (1 - labels) * log_not).mean()


@dataclass
class ConceptDetector:
    """A trained detector with its vocabulary and val-split quality."""

    model: MILConceptDetector
    vocabulary: list[str]
    metrics: dict[str, float]
    device: torch.device


def _standardisation(table: GridFeatureTable, rows: np.ndarray, batch: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    total = torch.zeros(table.shape[2], dtype=torch.float64)
    squares = torch.zeros_like(total)
    count = 0
    for start in range(0, len(rows), batch):
        x = table.rows(rows[start:start + batch]).double().flatten(0, 1)  # (B*n, C)
        total += x.sum(0)
        squares += (x * x).sum(0)
        count += len(x)
    mean = total / count
    std = (squares / count - mean * mean).clamp(min=0).sqrt()
    return mean.float(), std.clamp(min=1e-3).float()


@torch.inference_mode()
def predict(model: MILConceptDetector, table: GridFeatureTable, rows: np.ndarray, batch: int,
            device: torch.device) -> np.ndarray:
    """(len(rows), K) float32 image-level word probabilities."""
    model.eval()
    out = [model.probabilities(table.rows(rows[s:s + batch]).to(device)).cpu().numpy()
           for s in range(0, len(rows), batch)]
    return np.concatenate(out) if out else np.zeros((0, model.words.out_features), np.float32)


def train_concept_detector(words: CaptionWords, features_h5: str | os.PathLike,
                           cfg: ConceptConfig, ks: Sequence[int] = ()) -> ConceptDetector:
    """Fit the MIL detector on the train images of ``features_h5``; score it on val.

    Training does not depend on k (the concepts kept per image), so one detector serves every
    concept store (49 for the grid, 36 for the regions, the test2015 images): ``ks`` lists the
    k values whose val precision@k to measure besides ``cfg.k``."""
    ks = sorted({cfg.k, *ks})
    vocab = build_concept_vocabulary(words, cfg.vocab_size, cfg.stopwords)
    if len(vocab) < max(ks):
        raise ValueError(f"features.concepts.k = {max(ks)} but the training captions give only "
                         f"{len(vocab)} concept words")
    table = GridFeatureTable(features_h5, cfg.max_memory_gb)
    try:
        split_of = np.array([words.split.get(int(i), "") for i in table.image_ids])
        train_rows = np.flatnonzero(split_of == "train")
        val_rows = np.flatnonzero(split_of == "val")
        if len(train_rows) == 0:
            raise ValueError(f"{features_h5}: none of its images is in the train split of the "
                             f"captions; features and captions come from different datasets?")
        labels = word_presence(words, table.image_ids, vocab)  # (N, K)
        device = resolve_device(cfg.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            mean, std = _standardisation(table, train_rows, cfg.batch_size)
            prior = torch.from_numpy(labels[train_rows].mean(0))
            model = MILConceptDetector(table.shape[2], len(vocab), cfg.hidden_dim, mean, std,
                                       prior, table.shape[1]).to(device)
        optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr,
                                     weight_decay=cfg.weight_decay)
        generator = torch.Generator().manual_seed(cfg.seed)
        for epoch in range(cfg.epochs):
            model.train()
            order = train_rows[torch.randperm(len(train_rows), generator=generator).numpy()]
            total = 0.0
            starts = range(0, len(order), cfg.batch_size)
            for start in track(starts, f"concept detector epoch {epoch + 1}/{cfg.epochs}",
                               len(starts), unit="batches", logger=log, bar=cfg.progress):
                rows = order[start:start + cfg.batch_size]
                x = table.rows(rows).to(device)
                y = torch.from_numpy(labels[rows]).to(device)
                loss = noisy_or_bce(model.log_not_present(model(x)), y)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                total += loss.item() * len(rows)
            log.info("concepts epoch %d: train BCE %.4f", epoch + 1, total / len(order))
        metrics = {"num_train_images": int(len(train_rows)), "num_val_images": int(len(val_rows))}
        if len(val_rows):
            probs = predict(model, table, val_rows, cfg.batch_size, device)
            frequency = np.broadcast_to(labels[train_rows].mean(0), probs.shape)
            truth = labels[val_rows]
            metrics.update({
                "val_mAP": mean_average_precision(probs, truth),
                "val_precision_at_k": precision_at_k(probs, truth, cfg.k),
                "baseline_val_mAP": mean_average_precision(frequency, truth),
                "baseline_val_precision_at_k": precision_at_k(frequency, truth, cfg.k),
                "val_precision_at": {k: precision_at_k(probs, truth, k) for k in ks},
                "baseline_val_precision_at": {k: precision_at_k(frequency, truth, k)
                                              for k in ks},
            })
        else:
            log.warning("no val images among the features: concept quality not measured")
            metrics.update(dict.fromkeys(("val_mAP", "val_precision_at_k", "baseline_val_mAP",
                                          "baseline_val_precision_at_k"), math.nan))
            metrics.update({"val_precision_at": dict.fromkeys(ks, math.nan),
                            "baseline_val_precision_at": dict.fromkeys(ks, math.nan)})
        log.info("concept detector on val: %s", metrics)
    finally:
        table.close()
    return ConceptDetector(model, vocab, metrics, device)


def _metrics_at(metrics: Mapping[str, object], k: int) -> dict[str, object]:
    """The detector's scalar quality numbers, with precision@k for this store's ``k``."""
    out = {name: value for name, value in metrics.items() if not isinstance(value, Mapping)}
    for per_k, name in (("val_precision_at", "val_precision_at_k"),
                        ("baseline_val_precision_at", "baseline_val_precision_at_k")):
        table = metrics.get(per_k)
        if isinstance(table, Mapping):
            out[name] = float(table.get(k, math.nan))
    return out


def extract_concepts(detector: ConceptDetector, features_h5: str | os.PathLike,
                     out_h5: str | os.PathLike, cfg: ConceptConfig) -> Path:
    """Top-k words (ids into the vocabulary, probabilities descending) of every store image."""
    if cfg.k > len(detector.vocabulary):
        raise ValueError(f"features.concepts.k = {cfg.k} but the detector knows only "
                         f"{len(detector.vocabulary)} concept words")
    table = GridFeatureTable(features_h5, cfg.max_memory_gb)
    n, k = len(table.image_ids), cfg.k
    attrs = {"concept_words": detector.vocabulary, "k": k, "vocab_size": len(detector.vocabulary),
             "stopwords": list(cfg.stopwords), "features_store": str(features_h5),
             **_metrics_at(detector.metrics, k)}
    try:
        with atomic_h5(out_h5, kind="concepts", config=asdict(cfg), attrs=attrs) as f:
            f.create_dataset("image_ids", data=table.image_ids.astype(np.int64))
            ids = f.create_dataset("concept_ids", shape=(n, k), dtype=np.int32,
                                   chunks=(min(n, 1024), k))
            probs = f.create_dataset("concept_probs", shape=(n, k), dtype=np.float32,
                                     chunks=(min(n, 1024), k))
            step = max(cfg.batch_size, 256)
            for start in track(range(0, n, step), "concepts of every image", n, unit="images",
                               logger=log, bar=cfg.progress, size=lambda s: min(step, n - s)):
                rows = np.arange(start, min(n, start + step))
                p = torch.from_numpy(predict(detector.model, table, rows, cfg.batch_size,
                                             detector.device))
                top = p.topk(k, dim=1)  # sorted descending
                ids[start:start + len(rows)] = top.indices.numpy().astype(np.int32)
                probs[start:start + len(rows)] = top.values.numpy()
    finally:
        table.close()
    return Path(out_h5)


def build_concept_store(captions: CaptionWords | str | os.PathLike,
                        features_h5: str | os.PathLike, out_h5: str | os.PathLike,
                        cfg: ConceptConfig, extract_from: str | os.PathLike | None = None
                        ) -> Path:
    """Train the detector on ``captions`` (words, a Karpathy JSON or a captions store) and the
    grid features, then write the ``concepts`` store for every image of the features, or of
    the grid store ``extract_from`` (images without captions, e.g. the VQA server's test2015
    images: the same seeded detector, trained on the same images, labels them)."""
    words = captions if isinstance(captions, CaptionWords) else load_caption_words(captions)
    if not words.tokens:
        raise StoreError(f"{captions}: no captions")
    detector = train_concept_detector(words, features_h5, cfg)
    return extract_concepts(detector, extract_from or features_h5, out_h5, cfg)


# --------------------------------------------------------------------------- one detector, saved

DETECTOR_FORMAT = "mia-concept-detector/1"


def save_concept_detector(detector: ConceptDetector, path: str | os.PathLike,
                          cfg: ConceptConfig) -> Path:
    """Write the trained detector (weights, vocabulary, val quality, config), atomically, so
    every concept store is labelled by this one detector instead of a retrained copy."""
    model = detector.model
    payload = {
        "format": DETECTOR_FORMAT,
        "state_dict": {name: t.detach().cpu() for name, t in model.state_dict().items()},
        "vocabulary": list(detector.vocabulary),
        "metrics": detector.metrics,
        "config": asdict(cfg),
        "in_dim": int(model.mean.shape[0]),
        "hidden_dim": int(cfg.hidden_dim),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_concept_detector(path: str | os.PathLike, device: str = "auto") -> ConceptDetector:
    """A detector written by :func:`save_concept_detector`, on ``device``."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != DETECTOR_FORMAT:
        raise StoreError(f"{path}: not a concept detector written by mia "
                         f"(expected format {DETECTOR_FORMAT!r}); rerun train_concept_detector")
    state, vocab = payload["state_dict"], payload["vocabulary"]
    in_dim, hidden = payload["in_dim"], payload["hidden_dim"]
    model = MILConceptDetector(in_dim, len(vocab), hidden, torch.zeros(in_dim), torch.ones(in_dim),
                               torch.full((len(vocab),), 0.5), num_cells=1)
    model.load_state_dict(state)
    target = resolve_device(device)
    return ConceptDetector(model.to(target).eval(), list(vocab), dict(payload["metrics"]), target)


def concepts_from_detector(detector_path: str | os.PathLike, features_h5: str | os.PathLike,
                           out_h5: str | os.PathLike, cfg: ConceptConfig) -> Path:
    """The ``concepts`` store of every image of ``features_h5``, labelled by the saved detector
    (its top ``cfg.k`` words)."""
    detector = load_concept_detector(detector_path, cfg.device)
    return extract_concepts(detector, features_h5, out_h5, cfg)

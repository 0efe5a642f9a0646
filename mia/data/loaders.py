"""Batches for training and evaluation, gathered from stores held in RAM.

A per-item ``Dataset`` that opens HDF5 and reads one row at a time spends its time in Python and
HDF5 call overhead, not in the GPU (see ``benchmarks/dataloader.py``). Here every store is read
once: features stay float16 in RAM (half the memory; cast to float32 per batch), captions,
questions and targets are small arrays, and the image-id alignment between stores is resolved
once into row-index arrays. A batch is then a handful of vectorised gathers.

For feature stores larger than RAM, ``LoaderConfig(in_memory=False)`` keeps the HDF5 file open and
reads the (sorted, unique) rows of each batch in one call per batch instead; everything else
stays in RAM. Batch contents follow "Batches fed to models" in docs/CONTRACTS.md.

On a GPU (:meth:`CaptionData.place`, :meth:`VQAData.place`, called by the trainers): the whole
feature store moves to the GPU when it fits (``residency``; 18 GB of regions or 25 GB of grid
features in an 80 GB card) and a batch is an index on the device; otherwise each batch is
gathered into pinned host memory, in float16, copied asynchronously and cast on the GPU. With
:func:`prefetch` the gathering runs in a background thread while the GPU trains.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mia.data.karpathy import SPLIT_CODES
from mia.data.store import (
    StoreError,
    open_store,
    read_attrs,
    read_dataset,
    rebuild_hint,
    require_dataset,
    verify_dataset,
)
from mia.data.tfidf import SparseMatrix
from mia.data.vocab import Vocabulary

Batch = dict[str, torch.Tensor]
_FEATURE_KINDS = ("grid_features", "region_features")


@dataclass(frozen=True)
class LoaderConfig:
    """``in_memory``: hold features in RAM (float16) rather than reading rows per batch from HDF5;
    ``pin_memory``: pin batch tensors so ``.to(cuda, non_blocking=True)`` overlaps compute;
    ``float32_features``: cast features on the CPU (the contract); ``False`` hands over the stored
    float16 so the cast runs on the GPU and the host-to-device copy halves;
    ``residency``: where :meth:`CaptionData.place` puts the features on a GPU: ``device`` (the
    whole store on the GPU), ``host`` (pinned gathers, copied per batch) or ``auto`` (the GPU
    when the store takes at most half of its free memory)."""

    in_memory: bool = True
    pin_memory: bool = False
    float32_features: bool = True
    residency: str = "auto"

    @classmethod
    def for_device(cls, device: str | torch.device) -> LoaderConfig:
        """What a training job on ``device`` wants: pinned batches on CUDA, stores on the GPU
        when they fit (the trainers call ``place``)."""
        return cls(pin_memory=torch.device(device).type == "cuda" or (
            str(device) == "auto" and torch.cuda.is_available()))


#: ``auto`` residency: a store goes to the GPU when it takes at most this share of free memory.
DEVICE_SHARE = 0.5


def _fits_on(device: torch.device, nbytes: int, residency: str) -> bool:
    if residency not in ("auto", "device", "host"):
        raise ValueError(f"loader residency {residency!r} is not auto, device or host")
    if device.type != "cuda" or residency == "host" or not torch.cuda.is_available():
        return False
    if residency == "device":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= DEVICE_SHARE * free


def align_rows(store_ids: np.ndarray, wanted_ids: np.ndarray, store_path: str | os.PathLike,
               needed_by: str) -> np.ndarray:
    """Row of ``store_ids`` holding each of ``wanted_ids``; an error names the first missing id."""
    store_ids = np.asarray(store_ids, dtype=np.int64)
    wanted_ids = np.asarray(wanted_ids, dtype=np.int64)
    if len(store_ids) == 0:
        raise StoreError(f"{store_path}: store has no images, but {needed_by} needs "
                         f"{len(wanted_ids)}")
    order = np.argsort(store_ids, kind="stable")
    pos = np.clip(np.searchsorted(store_ids, wanted_ids, sorter=order), 0, len(store_ids) - 1)
    rows = order[pos]
    missing = store_ids[rows] != wanted_ids
    if missing.any():
        raise StoreError(f"{store_path}: image id {int(wanted_ids[missing][0])} (needed by "
                         f"{needed_by}) is not in this store ({int(missing.sum())} missing in "
                         "all); rebuild the store over the same images")
    return rows


def _split_code(split: str) -> int:
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; use one of {sorted(SPLIT_CODES)}")
    return SPLIT_CODES[split]


def _batches(rows: np.ndarray, batch_size: int, start: int = 0) -> Iterator[np.ndarray]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for b in range(start, -(-len(rows) // batch_size)):
        yield rows[b * batch_size:(b + 1) * batch_size]


def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of an epoch: a pure function of (seed, epoch), so resuming reproduces it."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def _finish(batch: Batch, pin: bool) -> Batch:
    if pin and torch.cuda.is_available():  # host tensors only; placed features are on the GPU
        return {k: v.pin_memory() if v.device.type == "cpu" else v for k, v in batch.items()}
    return batch


class FeatureTable:
    """Per-image visual features of a ``grid_features`` or ``region_features`` store.

    In RAM the real stores take N x n x C x 2 bytes: 123,287 x 49 x 2048 grid features are
    24.7 GB, 36 regions 18.2 GB. With ``in_memory=False`` the HDF5 file stays open in this process;
    do not hand such a table to forked ``DataLoader`` workers (h5py handles do not survive fork).
    """

    def __init__(self, path: str | os.PathLike, in_memory: bool = True,
                 float32: bool = True) -> None:
        self.path = Path(path)
        self.float32 = float32
        self._file = open_store(self.path)  # checks ids, checksums of small datasets, samples
        try:
            self._load(in_memory)
        except BaseException:
            self._file.close()
            raise

    def _load(self, in_memory: bool) -> None:
        kind = self._file.attrs.get("kind")
        if kind not in _FEATURE_KINDS:
            raise StoreError(f"{self.path}: store kind is {kind!r}, expected one of {_FEATURE_KINDS}")
        self.kind = str(kind)
        self.image_ids = self._file["image_ids"][()]
        dataset = require_dataset(self._file, "features", self.path)
        if dataset.ndim != 3:
            raise StoreError(f"{self.path}: dataset 'features' has shape {dataset.shape}, expected "
                             f"(N, n, C); {rebuild_hint(self.path, kind)}")
        self.shape = tuple(dataset.shape)  # (N, n, C)
        n = self.shape[1]
        # Rows past ``num_boxes`` are masked out when they are zeros (TSV, detectron2); stores
        # pooled on given boxes pad with real whole-image and grid-cell features, kept visible.
        real_padding = self._file.attrs.get("padding") == "whole_image_and_grid"
        counts = (read_dataset(self._file, "num_boxes") if "num_boxes" in self._file
                  and not real_padding else np.full(len(self.image_ids), n))
        self._mask = torch.from_numpy(np.arange(n)[None, :] < counts[:, None])  # (N, n) bool
        if in_memory:
            features = read_dataset(self._file, "features")
            # Read whole anyway: hashing it (~1.7 GB/s) checks every row, not just a sample.
            verify_dataset(self._file, "features", features)
            self._features: torch.Tensor | None = torch.from_numpy(features)
            self._file.close()
            self._dataset = None
        else:
            self._features = None
            self._dataset = dataset

    _target: torch.device | None = None  # the training GPU, once placed

    def place(self, device: torch.device | str, residency: str = "auto") -> str:
        """Serve batches on ``device``: the whole table there when it fits (``residency``),
        else pinned gathers copied per batch. Returns where the features live."""
        device = torch.device(device)
        if device.type == "cpu":
            return "host"
        self._target = device
        if self._features is not None and _fits_on(device, self._features.nbytes, residency):
            self._features = self._features.to(device)
            self._mask = self._mask.to(device)
            return str(device)
        return "host (pinned batches)"

    def gather(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``features`` (B, n, C) float32 and ``feature_mask`` (B, n) bool of store rows ``rows``.

        Placed on a GPU (:meth:`place`), both come back on it: an index into the resident
        table, or float16 rows gathered into pinned memory, copied without waiting, and cast
        there (half the bytes of a float32 copy).
        """
        index = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        if self._target is not None:
            return self._gather_on(self._target, index)
        if self._features is not None:
            feats = self._features.index_select(0, index)
        else:
            feats = torch.from_numpy(self._read_rows(rows))
        return (feats.float() if self.float32 else feats), self._mask[index]

    def _gather_on(self, device: torch.device, index: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        if self._features is not None and self._features.device == device:
            on = index.to(device, non_blocking=True)
            feats, mask = self._features.index_select(0, on), self._mask.index_select(0, on)
        else:
            if self._features is not None:
                host = torch.empty((len(index), *self._features.shape[1:]),
                                   dtype=self._features.dtype, pin_memory=True)
                torch.index_select(self._features, 0, index, out=host)
            else:
                host = torch.from_numpy(self._read_rows(index.numpy())).pin_memory()
            feats = host.to(device, non_blocking=True)
            mask = self._mask[index].pin_memory().to(device, non_blocking=True)
        return (feats.float() if self.float32 else feats), mask

    def _read_rows(self, rows: np.ndarray) -> np.ndarray:
        # One read per distinct row in file order: h5py's list indexing is a slow point selection.
        unique, inverse = np.unique(rows, return_inverse=True)
        out = np.empty((len(unique), *self.shape[1:]), dtype=self._dataset.dtype)
        for k, row in enumerate(unique):
            try:
                self._dataset.read_direct(out, np.s_[row], np.s_[k])
            except (OSError, RuntimeError) as err:
                raise StoreError(f"{self.path}: dataset 'features' row {row} cannot be read "
                                 f"({err}); {rebuild_hint(self.path, self.kind)}") from err
        # Out of core only sampled rows were checked on open: a NaN row stops here, by name.
        bad = ~np.isfinite(out.reshape(len(out), -1)).all(axis=1)
        if bad.any():
            row = int(unique[np.argmax(bad)])
            raise StoreError(f"{self.path}: dataset 'features' row {row} (image_id "
                             f"{int(self.image_ids[row])}) holds NaN or inf values; the file is "
                             f"damaged: {rebuild_hint(self.path, self.kind)}")
        return out[inverse]


class ConceptTable:
    """Top-k concepts per image, mapped once from ``concept_words`` to caption-vocabulary ids."""

    def __init__(self, path: str | os.PathLike, vocab: Vocabulary) -> None:
        self.path = Path(path)
        with open_store(self.path, "concepts") as f:
            self.image_ids = f["image_ids"][()]
            ids = f["concept_ids"][()].astype(np.int64)
            words = read_attrs(f).get("concept_words")
        if not isinstance(words, list):
            raise StoreError(f"{self.path}: attribute 'concept_words' is missing or not a list")
        if ids.size and ids.max() >= len(words):
            raise StoreError(f"{self.path}: concept id {int(ids.max())} is out of range for "
                             f"{len(words)} concept_words")
        to_vocab = np.array([vocab.id(w) for w in words] + [0], dtype=np.int64)  # [-1] -> <pad>
        self._concepts = torch.from_numpy(to_vocab[np.where(ids >= 0, ids, -1)])  # (N, k) int64
        self._mask = torch.from_numpy(ids >= 0)

    def gather(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``concepts`` (B, k) int64 caption-vocab ids and ``concept_mask`` (B, k) bool."""
        index = torch.from_numpy(rows)
        return self._concepts[index], self._mask[index]


class CaptionData:
    """Captions (one training item per caption) aligned by image id with features and concepts."""

    def __init__(self, captions_path: Path, features: FeatureTable | None,
                 concepts: ConceptTable | None, cfg: LoaderConfig) -> None:
        with open_store(captions_path, "captions") as f:
            self.image_ids = f["image_ids"][()]
            self.split = f["split"][()]
            self._captions = torch.from_numpy(f["captions"][()].astype(np.int64))
            self._caption_image = f["caption_image_index"][()].astype(np.int64)
            self._lengths = torch.from_numpy(f["caption_lengths"][()].astype(np.int64))
            self.vocab = Vocabulary(tuple(read_attrs(f)["vocab"]))
        self.path = captions_path
        self.cfg = cfg
        self.features = features
        needed = f"{captions_path.name}"
        self._feature_rows = (None if features is None else
                              align_rows(features.image_ids, self.image_ids, features.path, needed))
        self.concepts = concepts
        self._concept_rows = (None if concepts is None else
                              align_rows(concepts.image_ids, self.image_ids, concepts.path, needed))
        self._ids = torch.from_numpy(self.image_ids.astype(np.int64))
        self._train_captions = np.flatnonzero(self.split[self._caption_image] == SPLIT_CODES["train"])

    @classmethod
    def from_stores(cls, captions_h5: str | os.PathLike, features_h5: str | os.PathLike | None = None,
                    concepts_h5: str | os.PathLike | None = None,
                    cfg: LoaderConfig = LoaderConfig()) -> CaptionData:
        """Load ``captions.h5`` and, optionally, a grid/region feature store and a concept store."""
        captions_path = Path(captions_h5)
        features = (None if features_h5 is None else
                    FeatureTable(features_h5, cfg.in_memory, cfg.float32_features))
        vocab = None
        if concepts_h5 is not None:
            with open_store(captions_path, "captions") as f:
                vocab = Vocabulary(tuple(read_attrs(f)["vocab"]))
        concepts = None if concepts_h5 is None else ConceptTable(concepts_h5, vocab)
        return cls(captions_path, features, concepts, cfg)

    def place(self, device: torch.device | str) -> str:
        """Serve the features on the training ``device`` (see :meth:`FeatureTable.place`)."""
        if self.features is None:
            return "none loaded (a fine-tuned CNN computes them from images)"
        return self.features.place(device, self.cfg.residency)

    # ------------------------------------------------------------------ sizes
    @property
    def num_train_captions(self) -> int:
        return len(self._train_captions)

    @property
    def captions_per_image(self) -> int:
        """Training captions per training image, rounded (5 in COCO; a few images have 6-7)."""
        images = len(self.split_rows("train"))
        return max(1, round(self.num_train_captions / max(images, 1)))

    def num_train_image_batches(self, images_per_batch: int) -> int:
        return -(-len(self.split_rows("train")) // images_per_batch)

    def num_train_batches(self, batch_size: int) -> int:
        return -(-self.num_train_captions // batch_size)

    def split_rows(self, split: str) -> np.ndarray:
        """Image rows of ``split``, in store (Karpathy) order."""
        return np.flatnonzero(self.split == _split_code(split))

    # ------------------------------------------------------------------ batches
    def image_batch(self, rows: np.ndarray) -> Batch:
        """Per-image tensors of image rows ``rows``: ids, features + mask, concepts + mask."""
        batch: Batch = {"image_ids": self._ids[torch.from_numpy(rows)]}
        if self.features is not None:
            batch["features"], batch["feature_mask"] = self.features.gather(self._feature_rows[rows])
        if self.concepts is not None:
            batch["concepts"], batch["concept_mask"] = self.concepts.gather(self._concept_rows[rows])
        return batch

    def caption_batch(self, caption_rows: np.ndarray) -> Batch:
        """A training batch of caption rows: their image's tensors plus captions and lengths."""
        batch = self.image_batch(self._caption_image[caption_rows])
        index = torch.from_numpy(caption_rows)
        batch["captions"] = self._captions[index]
        batch["caption_lengths"] = self._lengths[index]
        return batch

    def train_batches(self, epoch: int, batch_size: int, seed: int, start: int = 0
                      ) -> Iterator[Batch]:
        """One item per training caption, shuffled by ``(seed, epoch)``; skip ``start`` batches.

        Nothing is dropped: the last batch may be smaller.
        """
        order = self._train_captions[_epoch_order(self.num_train_captions, seed, epoch)]
        for rows in _batches(order, batch_size, start):
            yield _finish(self.caption_batch(rows), self.cfg.pin_memory)

    def train_batches_by_image(self, epoch: int, images_per_batch: int, seed: int,
                               start: int = 0) -> Iterator[Batch]:
        """Every caption of ``images_per_batch`` training images per batch, images shuffled by
        ``(seed, epoch)``; skip ``start`` batches (self-critical.pytorch's ``seq_per_img``).

        A caption batch (:meth:`caption_batch`, captions grouped by image, in store order) plus
        ``batch_image_ids`` (B_img,) and ``caption_image`` (B_cap,): the position of each
        caption's image in ``batch_image_ids``, so per-image work (a CNN) runs once per image.
        Every training caption is in exactly one batch of an epoch.
        """
        rows = self.split_rows("train")
        starts, order = self._captions_by_image()
        for chunk in _batches(rows[_epoch_order(len(rows), seed, epoch)], images_per_batch,
                              start):
            counts = starts[chunk + 1] - starts[chunk]
            caption_rows = np.concatenate([order[starts[r]:starts[r + 1]] for r in chunk])
            batch = self.caption_batch(caption_rows)
            batch["batch_image_ids"] = self._ids[torch.from_numpy(chunk)]
            batch["caption_image"] = torch.from_numpy(np.repeat(np.arange(len(chunk)), counts))
            yield _finish(batch, self.cfg.pin_memory)

    def _captions_by_image(self) -> tuple[np.ndarray, np.ndarray]:
        """(starts (N+1,), caption rows sorted by image): image r's captions are
        ``order[starts[r]:starts[r + 1]]``, in store order."""
        if getattr(self, "_by_image", None) is None:
            order = np.argsort(self._caption_image, kind="stable")
            counts = np.bincount(self._caption_image, minlength=len(self.image_ids))
            self._by_image = (np.concatenate([[0], np.cumsum(counts)]), order)
        return self._by_image

    def train_image_batches(self, epoch: int, batch_size: int, seed: int, start: int = 0
                            ) -> Iterator[Batch]:
        """One item per training image (for SCST, which samples captions per image)."""
        rows = self.split_rows("train")
        for chunk in _batches(rows[_epoch_order(len(rows), seed, epoch)], batch_size, start):
            yield _finish(self.image_batch(chunk), self.cfg.pin_memory)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        """One item per image of ``split``, in store order."""
        for rows in _batches(self.split_rows(split), batch_size):
            yield _finish(self.image_batch(rows), self.cfg.pin_memory)

    def references(self, split: str) -> dict[int, list[str]]:
        """``{image_id: [space-joined tokens]}``: every caption of ``split``, whole and in its own
        words (the store's ``caption_text``: Karpathy's tokens, never ``<unk>``-ed, never cut at
        ``max_length``), the references validation CIDEr-D scores against. Reported scores use
        ``references_{split}.json`` and the official toolkit.

        Stores written before ``caption_text`` existed fall back, with a warning, to the encoded
        captions (``<unk>`` below the vocabulary threshold, cut at ``max_length``).
        """
        code = _split_code(split)
        rows = np.flatnonzero(self.split[self._caption_image] == code)
        with open_store(self.path, "captions") as f:
            text = f["caption_text"].asstr()[()] if "caption_text" in f else None
        if text is None:
            import warnings

            warnings.warn(f"{self.path}: no 'caption_text' (written by an older version): "
                          "validation references are the encoded captions, with <unk> and cut "
                          "at max_length; rebuild the captions store for the raw ones",
                          stacklevel=2)
            words = self.vocab.words
            text = {row: " ".join(words[i] for i in
                                  self._captions[row, 1:int(self._lengths[row]) - 1].tolist())
                    for row in rows.tolist()}
        out: dict[int, list[str]] = defaultdict(list)
        for row in rows:
            out[int(self.image_ids[self._caption_image[row]])].append(str(text[row]))
        return dict(out)

class BoxTable:
    """Region boxes as BAN's counting module reads them: x1, y1, x2, y2 divided by the image's
    width and height (so within [0, 1]), float32, held in RAM (123,287 x 36 x 4 x 4 bytes = 71 MB).

    Padded box rows of the store (past ``num_boxes``) stay whatever the store holds (zeros for
    TSV/detectron2 stores); ``feature_mask`` says which rows are real.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        with open_store(self.path, "region_features") as f:
            missing = [n for n in ("boxes", "image_w", "image_h") if n not in f]
            if missing:
                raise StoreError(f"{self.path}: region store lacks {missing}; docs/CONTRACTS.md "
                                 "requires boxes, image_w and image_h: rebuild the store")
            self.image_ids = f["image_ids"][()]
            boxes = f["boxes"][()].astype(np.float32)  # (N, n, 4) pixels
            width = f["image_w"][()].astype(np.float32)  # (N,)
            height = f["image_h"][()].astype(np.float32)
        bad = (width <= 0) | (height <= 0)
        if bad.any():
            raise StoreError(f"{self.path}: image {int(self.image_ids[np.argmax(bad)])} has size "
                             f"{width[np.argmax(bad)]:g} x {height[np.argmax(bad)]:g}; boxes "
                             "cannot be normalised: rebuild the store")
        scale = np.stack([width, height, width, height], axis=1)[:, None, :]  # (N, 1, 4)
        self._boxes = torch.from_numpy(boxes / scale)  # (N, n, 4)
        self.shape = tuple(self._boxes.shape)

    @classmethod
    def load(cls, path: str | os.PathLike) -> BoxTable | None:
        """The boxes of region store ``path``, or None when it has no boxes/image sizes (the
        batches then carry no ``boxes``, and a model that counts says so)."""
        with open_store(path) as f:
            complete = all(n in f for n in ("boxes", "image_w", "image_h"))
        return cls(path) if complete else None

    def gather(self, rows: np.ndarray) -> torch.Tensor:
        """``boxes`` (B, n, 4) float32 of store rows ``rows``."""
        return self._boxes.index_select(0, torch.from_numpy(rows))


class ConceptIdTable:
    """Top-k concepts per image as ids into the store's OWN ``concept_words``.

    VQA models embed concepts with a table over ``concept_words`` (``mia.vqa.image``), not the
    question vocabulary, so no mapping is made; padded slots (-1) become id 0 with mask False.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        with open_store(self.path, "concepts") as f:
            self.image_ids = f["image_ids"][()]
            ids = f["concept_ids"][()].astype(np.int64)
            words = read_attrs(f).get("concept_words")
        if not isinstance(words, list):
            raise StoreError(f"{self.path}: attribute 'concept_words' is missing or not a list")
        if ids.size and ids.max() >= len(words):
            raise StoreError(f"{self.path}: concept id {int(ids.max())} is out of range for "
                             f"{len(words)} concept_words")
        self.words: list[str] = [str(w) for w in words]
        self._ids = torch.from_numpy(np.where(ids >= 0, ids, 0))  # (N, k) int64
        self._mask = torch.from_numpy(ids >= 0)

    def gather(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``concepts`` (B, k) int64 ids into ``words`` and ``concept_mask`` (B, k) bool."""
        index = torch.from_numpy(rows)
        return self._ids[index], self._mask[index]


class VQAData:
    """VQA questions aligned by image id with region features; soft targets made per batch.

    Batches also carry ``boxes`` (B, n, 4), normalised, when the region store has boxes and
    image sizes, and ``concepts``/``concept_mask`` (B, k) ids into ``concept_words`` when a
    concept store is given (the MIA variants need them).
    """

    def __init__(self, vqa_path: Path, features: FeatureTable, cfg: LoaderConfig,
                 boxes: BoxTable | None = None, concepts: ConceptIdTable | None = None) -> None:
        with open_store(vqa_path, "vqa") as f:
            self.image_ids = f["image_ids"][()]
            self.question_ids = f["question_ids"][()]
            self.split = f["split"][()]
            self._question_image = f["question_image_index"][()].astype(np.int64)
            self._questions = torch.from_numpy(f["questions"][()].astype(np.int64))
            self._labels = torch.from_numpy(f["answer_labels"][()].astype(np.int64))
            self._scores = torch.from_numpy(f["answer_scores"][()])
            attrs = read_attrs(f)
            self.tfidf = None  # BAN's co-occurrence matrix (mia.data.tfidf), when the store has it
            if "tfidf_values" in f:
                self.tfidf = SparseMatrix(f["tfidf_rows"][()].astype(np.int64),
                                          f["tfidf_cols"][()].astype(np.int64),
                                          f["tfidf_values"][()].astype(np.float64),
                                          len(attrs["question_vocab"]))
        self.path = vqa_path
        self.cfg = cfg
        self.question_vocab: list[str] = list(attrs["question_vocab"])
        self.answer_vocab: list[str] = list(attrs["answer_vocab"])
        self.features = features
        image_rows = align_rows(features.image_ids, self.image_ids, features.path, vqa_path.name)
        self._feature_rows = image_rows[self._question_image]  # (Q,) row in the feature store
        self._qids = torch.from_numpy(self.question_ids.astype(np.int64))
        self._image_of_question = torch.from_numpy(self.image_ids[self._question_image])
        self.boxes = boxes
        self._box_rows = None
        if boxes is not None:
            if boxes.shape[1] != features.shape[1]:
                raise StoreError(f"{boxes.path}: {boxes.shape[1]} boxes per image but "
                                 f"{features.shape[1]} feature rows in {features.path}")
            self._box_rows = align_rows(boxes.image_ids, self.image_ids, boxes.path,
                                        vqa_path.name)[self._question_image]
        self.concepts = concepts
        self._concept_rows = (None if concepts is None else align_rows(
            concepts.image_ids, self.image_ids, concepts.path, vqa_path.name)[self._question_image])

    @classmethod
    def from_stores(cls, vqa_h5: str | os.PathLike, regions_h5: str | os.PathLike,
                    cfg: LoaderConfig = LoaderConfig(),
                    concepts_h5: str | os.PathLike | None = None) -> VQAData:
        """Load ``vqa.h5``, a region store (its boxes too, when it has them) and, optionally, a
        concept store."""
        features = FeatureTable(regions_h5, cfg.in_memory, cfg.float32_features)
        concepts = None if concepts_h5 is None else ConceptIdTable(concepts_h5)
        return cls(Path(vqa_h5), features, cfg, BoxTable.load(regions_h5), concepts)

    def place(self, device: torch.device | str) -> str:
        """Serve the features on the training ``device`` (see :meth:`FeatureTable.place`)."""
        return self.features.place(device, self.cfg.residency)

    @property
    def concept_words(self) -> list[str] | None:
        """The concept store's vocabulary (``concepts`` index it), or None without one."""
        return None if self.concepts is None else self.concepts.words

    @property
    def n_answers(self) -> int:
        return len(self.answer_vocab)

    def split_rows(self, splits: str | Sequence[str]) -> np.ndarray:
        """Question rows of ``splits`` (one name or several), in store order."""
        names = [splits] if isinstance(splits, str) else list(splits)
        return np.flatnonzero(np.isin(self.split, [_split_code(s) for s in names]))

    def num_train_batches(self, batch_size: int, splits: Sequence[str] = ("train",)) -> int:
        return -(-len(self.split_rows(splits)) // batch_size)

    def question_batch(self, rows: np.ndarray) -> Batch:
        """Tensors of question rows: ids, questions, features + mask, dense soft ``target``, and
        ``boxes`` and ``concepts`` + ``concept_mask`` where available."""
        index = torch.from_numpy(rows)
        feats, mask = self.features.gather(self._feature_rows[rows])
        labels = self._labels[index]  # (B, 10), -1 pads
        valid = labels >= 0
        target = torch.zeros(len(rows), self.n_answers)
        # scatter_add_ (not scatter_): padded slots add 0 to column 0 instead of overwriting it
        target.scatter_add_(1, labels.clamp(min=0), self._scores[index] * valid)
        batch = {"question_ids": self._qids[index], "image_ids": self._image_of_question[index],
                 "questions": self._questions[index], "features": feats, "feature_mask": mask,
                 "target": target}
        if self.boxes is not None:
            batch["boxes"] = self.boxes.gather(self._box_rows[rows])
        if self.concepts is not None:
            batch["concepts"], batch["concept_mask"] = self.concepts.gather(
                self._concept_rows[rows])
        return batch

    def train_batches(self, epoch: int, batch_size: int, seed: int, start: int = 0,
                      splits: Sequence[str] = ("train",)) -> Iterator[Batch]:
        """Questions of ``splits`` shuffled by ``(seed, epoch)``; skip ``start`` batches."""
        rows = self.split_rows(splits)
        for chunk in _batches(rows[_epoch_order(len(rows), seed, epoch)], batch_size, start):
            yield _finish(self.question_batch(chunk), self.cfg.pin_memory)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        """Questions of ``split`` in store order."""
        for rows in _batches(self.split_rows(split), batch_size):
            yield _finish(self.question_batch(rows), self.cfg.pin_memory)


# ---------------------------------------------------------------------- background prefetch

_DONE = object()


def prefetch(batches: Iterator[Batch], depth: int = 2) -> Iterator[Batch]:
    """Yield ``batches`` made ``depth`` ahead by a background thread.

    The gathers and the float16 -> float32 cast run in numpy/torch kernels that release the GIL,
    so the next batch is assembled while the training step runs. Order and content are
    unchanged; an exception in the producer is re-raised here.
    """
    slots: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        slots.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(_DONE)
        except BaseException as err:  # handed to the consumer, which re-raises it
            slots.put(err)

    thread = threading.Thread(target=produce, name="mia-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


# ---------------------------------------------------------------------- torch Dataset wrappers


def _single(batch: Batch) -> Batch:
    return {k: v[0] for k, v in batch.items()}


class CaptionDataset(Dataset):
    """Per-caption items of one split for ``torch.utils.data.DataLoader`` (default collate works).

    The batch iterators of :class:`CaptionData` are faster; this exists for DataLoader habits.
    """

    def __init__(self, data: CaptionData, split: str = "train") -> None:
        self.data = data
        self.rows = np.flatnonzero(data.split[data._caption_image] == _split_code(split))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Batch:
        return _single(self.data.caption_batch(self.rows[[i]]))


class CaptionImageDataset(Dataset):
    """Per-image items of one split (evaluation) for DataLoader."""

    def __init__(self, data: CaptionData, split: str) -> None:
        self.data = data
        self.rows = data.split_rows(split)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Batch:
        return _single(self.data.image_batch(self.rows[[i]]))


class VQADataset(Dataset):
    """Per-question items of some splits for DataLoader."""

    def __init__(self, data: VQAData, splits: str | Sequence[str] = "train") -> None:
        self.data = data
        self.rows = data.split_rows(splits)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Batch:
        return _single(self.data.question_batch(self.rows[[i]]))

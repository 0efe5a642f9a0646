"""Reader for Karpathy's split file ``dataset_coco.json`` (from ``caption_datasets.zip``).

Every captioning paper since 2015, this one included, trains and tests on this split. The real
file lists 123,287 images: 82,783 ``train`` + 30,504 ``restval`` (both used for training, so
113,287 training images), 5,000 ``val`` and 5,000 ``test``. Each image has ``filepath``
(``train2014``/``val2014``), ``filename``, ``cocoid`` and ``sentences`` with the pre-tokenised
``tokens`` (lowercase, punctuation stripped) and the ``raw`` caption.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from mia.data.errors import DataFormatError, load_json, require, require_list

#: Split names in the file, and the split code each maps to in our stores (restval trains).
KARPATHY_SPLITS: dict[str, int] = {"train": 0, "restval": 0, "val": 1, "test": 2}
#: Store split codes, by name.
SPLIT_CODES: dict[str, int] = {"train": 0, "val": 1, "test": 2}
#: Image counts of the real file after merging restval into train.
REAL_SPLIT_SIZES: dict[str, int] = {"train": 113_287, "val": 5_000, "test": 5_000}

_NON_WORD = re.compile(r"[^a-z0-9 ]+")


@dataclass(frozen=True)
class KarpathySentence:
    sentid: int
    raw: str
    tokens: tuple[str, ...]


@dataclass(frozen=True)
class KarpathyImage:
    cocoid: int
    filepath: str
    filename: str
    split: str  # as in the file: train, restval, val or test
    sentences: tuple[KarpathySentence, ...]

    @property
    def store_split(self) -> str:
        """``train`` for train and restval, else the file's split."""
        return "train" if self.split == "restval" else self.split

    @property
    def relative_path(self) -> str:
        """Path below ``{root}/images``, as the raw-data layout in docs/CONTRACTS.md places it."""
        return f"{self.filepath}/{self.filename}" if self.filepath else self.filename


def tokenize_caption(raw: str) -> list[str]:
    """Karpathy-style tokens: lowercase, punctuation removed, split on whitespace.

    Used to build Karpathy-format files (demo world, test fixtures) from raw COCO captions.
    """
    return _NON_WORD.sub(" ", raw.lower().replace("'", "")).split()


def read_karpathy(path: str | os.PathLike) -> list[KarpathyImage]:
    """Read ``dataset_coco.json`` in file order, validating every image and sentence."""
    path = Path(path)
    data = load_json(path)
    images: list[KarpathyImage] = []
    seen: set[int] = set()
    for i, img in enumerate(require_list(data, "images", path)):
        rec = f"images[{i}]"
        cocoid = require(img, "cocoid", int, path, rec)
        rec = f"images[{i}] (cocoid {cocoid})"
        if cocoid in seen:
            raise DataFormatError(path, rec, "cocoid", "duplicate cocoid")
        seen.add(cocoid)
        split = require(img, "split", str, path, rec)
        if split not in KARPATHY_SPLITS:
            raise DataFormatError(path, rec, "split",
                                  f"{split!r} is not one of {sorted(KARPATHY_SPLITS)}")
        sentences = []
        for j, sent in enumerate(require(img, "sentences", list, path, rec)):
            srec = f"{rec} sentences[{j}]"
            tokens = require(sent, "tokens", list, path, srec)
            if not all(isinstance(t, str) for t in tokens):
                raise DataFormatError(path, srec, "tokens", "tokens must all be strings")
            sentences.append(KarpathySentence(
                sentid=require(sent, "sentid", int, path, srec),
                raw=require(sent, "raw", str, path, srec),
                tokens=tuple(tokens),
            ))
        if not sentences:
            raise DataFormatError(path, rec, "sentences", "image has no sentences")
        images.append(KarpathyImage(
            cocoid=cocoid,
            filepath=require(img, "filepath", str, path, rec),
            filename=require(img, "filename", str, path, rec),
            split=split,
            sentences=tuple(sentences),
        ))
    if not images:
        raise DataFormatError(path, "<top>", "images", "no images")
    return images


def split_sizes(images: list[KarpathyImage]) -> dict[str, int]:
    """Images per store split (restval counted as train); the real file gives REAL_SPLIT_SIZES."""
    sizes = dict.fromkeys(SPLIT_CODES, 0)
    for img in images:
        sizes[img.store_split] += 1
    return sizes

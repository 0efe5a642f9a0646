"""CIDEr-D document frequencies as a file: computed once by a rule, loaded by every SCST run.

ruotianluo/self-critical.pytorch computes the training set's n-gram document frequencies once
(``scripts/prepro_ngrams.py`` -> ``data/coco-train-idxs.p``, a pickle of ``document_frequency``
and ``ref_len`` = the number of images) and its CIDEr-D reward reads them at every step; a
missing cached file is a common stumbling block of its users. Here the same content is an
``.npz`` without pickles (``np.load(allow_pickle=False)`` reads it), versioned:

| array | content |
|---|---|
| ``format``, ``version`` | ``"mia-cider-document-frequency"``, 1 |
| ``n``, ``sigma`` | CIDEr-D's n-gram orders and length-penalty width |
| ``num_docs`` | the reference count: images whose references made the frequencies |
| ``num_sentences`` | their reference sentences |
| ``words`` | (W,) str: word ``i`` has id ``i + 1`` in ``ngrams`` |
| ``ngrams`` | (G, n) int32 word ids, 0-padded for orders below n |
| ``df`` | (G,) int64 number of images whose references contain the n-gram |
| ``vocab`` | (V,) str: the caption vocabulary candidates' token ids index (may be empty) |
| ``source`` | str: how the references were made (split, end token, truncation) |
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mia.evaluation.cider import CiderDConfig, DocumentFrequency, _Codec
from mia.io import atomic_open

FORMAT = "mia-cider-document-frequency"
VERSION = 1


@dataclass(frozen=True)
class DocumentFrequencyFile:
    """What a file holds besides the frequencies themselves."""

    num_docs: int
    num_sentences: int
    source: str
    vocab: tuple[str, ...] | None


def _ngram_matrix(df: DocumentFrequency) -> np.ndarray:
    """The packed keys of ``df`` unpacked into word ids: (G, n) int32."""
    n, bits = df.codec.n, df.codec.bits
    if len(df.keys) == 0:
        return np.zeros((0, n), dtype=np.int32)
    words = np.ascontiguousarray(df.keys).view(np.uint16 if bits == 16 else np.uint32)
    return words.reshape(len(df.keys), -1)[:, :n].astype(np.int32)


def _pack(codec: _Codec, ngrams: np.ndarray) -> np.ndarray:
    """Word-id rows (G, n) -> the scorer's packed keys, through the codec's own packing: each
    row is handed over as a sentence and its one full-length n-gram is kept."""
    lengths = (ngrams > 0).sum(axis=1)
    flat = ngrams[ngrams > 0].astype(np.int64)  # row-major: each row's ids in order
    owner = np.repeat(np.arange(len(ngrams)), lengths)
    keys, owners, orders = codec.ngrams(flat, owner)
    whole = orders == lengths[owners] - 1
    packed = np.empty(len(ngrams), dtype=keys.dtype)
    packed[owners[whole]] = keys[whole]
    return packed


def save_document_frequency(df: DocumentFrequency, path: str | os.PathLike, *,
                            num_sentences: int, source: str) -> Path:
    """Write ``df`` to ``path`` (``.npz``, atomically)."""
    words = sorted(df.codec.ids, key=df.codec.ids.__getitem__)
    if not all(isinstance(w, str) for w in words):
        raise ValueError("save_document_frequency: the frequencies were built from token ids "
                         "without a vocabulary; build them from space-joined sentences or "
                         "pass vocab= to DocumentFrequency")
    vocab = df.codec.vocab or []
    arrays = {
        "format": np.array(FORMAT), "version": np.array(VERSION),
        "n": np.array(df.config.n), "sigma": np.array(df.config.sigma),
        "num_docs": np.array(df.num_docs), "num_sentences": np.array(num_sentences),
        "words": np.array(words, dtype=str), "ngrams": _ngram_matrix(df),
        "df": df.counts.astype(np.int64), "vocab": np.array(vocab, dtype=str),
        "source": np.array(source),
    }
    with atomic_open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    return Path(path)


def read_document_frequency(path: str | os.PathLike, vocab: Sequence[str] | None = None
                            ) -> tuple[DocumentFrequency, DocumentFrequencyFile]:
    """Load a file written by :func:`save_document_frequency`.

    ``vocab``: the caption vocabulary of the run; it must equal the one the file was made with
    (candidates are token ids of that vocabulary).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no document-frequency file; compute it once from the "
                                "training references: python -m mia.captioning.scst --captions "
                                "CAPTIONS_H5 --out FILE (the workflow's cider_document_frequency "
                                "rule; mia.captioning.scst.write_store_document_frequency)")
    z = _read_arrays(path)
    if "format" not in z or str(z["format"]) != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file")
    version = int(z["version"])
    if version != VERSION:
        raise ValueError(f"{path}: document-frequency file version {version}; this code "
                         f"reads version {VERSION}: compute the file again")
    missing = [k for k in ("n", "sigma", "words", "ngrams", "df", "vocab", "num_docs",
                           "num_sentences", "source") if k not in z]
    if missing:
        raise ValueError(f"{path}: document-frequency file without {missing}; {_REBUILD}")
    config = CiderDConfig(n=int(z["n"]), sigma=float(z["sigma"]))
    words = [str(w) for w in z["words"]]
    ngrams, counts = z["ngrams"], z["df"].astype(np.float64)
    stored_vocab = tuple(str(w) for w in z["vocab"]) or None
    info = DocumentFrequencyFile(int(z["num_docs"]), int(z["num_sentences"]),
                                 str(z["source"]), stored_vocab)
    if vocab is not None and tuple(vocab) != stored_vocab:
        raise ValueError(f"{path}: made with a different caption vocabulary "
                         f"({0 if stored_vocab is None else len(stored_vocab)} words) than this "
                         f"run's ({len(vocab)}); compute it again from this captions store")
    if ngrams.shape != (len(counts), config.n):
        raise ValueError(f"{path}: ngrams {ngrams.shape} do not match df ({len(counts)},) and "
                         f"n={config.n}")
    codec = _Codec(words, config.n, list(stored_vocab) if stored_vocab else None)
    keys = _pack(codec, ngrams)
    order = np.argsort(keys, kind="stable")
    df = object.__new__(DocumentFrequency)
    # The attributes DocumentFrequency._set makes; the round-trip test checks every score.
    df.config, df.codec, df.num_docs = config, codec, info.num_docs
    df.keys, df.counts = keys[order], counts[order]
    df.log_docs = float(np.log(float(info.num_docs)))
    return df, info


_REBUILD = ("delete it and rerun the rule 'cider_document_frequency' (python -m "
            "mia.captioning.scst --captions CAPTIONS_H5 --out FILE)")


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of the ``.npz``, read now, so an empty, cut or foreign file is one clear
    error naming it (numpy alone says ``EOFError: No data left in file``)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {key: z[key] for key in z.files}
    except (EOFError, OSError, ValueError, zipfile.BadZipFile, zlib.error) as err:
        why = "the file is empty" if path.stat().st_size == 0 else f"{type(err).__name__}: {err}"
        raise ValueError(f"{path}: not a readable document-frequency file ({why}); "
                         f"{_REBUILD}") from err


def load_document_frequency(path: str | os.PathLike,
                            vocab: Sequence[str] | None = None) -> DocumentFrequency:
    """:func:`read_document_frequency` without the file's description."""
    return read_document_frequency(path, vocab)[0]

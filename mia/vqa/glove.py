"""GloVe vectors for a vocabulary, read from a ``glove.6B.300d.txt``-format text file.

Both VQA references initialise their 300-d question word embedding from GloVe 6B
(``tools/create_dictionary.py: create_glove_embedding_init``). The file has one word per line,
``word v1 v2 ... v300``, separated by single spaces; 400k lines, ~1 GB. Only the lines of the
wanted words are parsed (a ``partition`` per line, a float parse for ~20k of them), so reading
stays a few seconds and never holds the whole file.

Unlike the reference, which leaves words missing from GloVe at zero, missing words keep their
random initialisation here (a zero row makes every unseen word look identical to the GRU).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GloveMatch:
    """GloVe rows for ``words``: ``vectors`` (V, dim) float32 (zero where not found), ``found``
    (V,) bool."""

    words: tuple[str, ...]
    vectors: Tensor
    found: Tensor

    @property
    def n_found(self) -> int:
        return int(self.found.sum())

    def subset(self, words: Sequence[str]) -> GloveMatch:
        """The rows of ``words`` (each must be among ``self.words``)."""
        index = {w: i for i, w in enumerate(self.words)}
        rows = torch.tensor([index[w] for w in words], dtype=torch.long)
        return GloveMatch(tuple(words), self.vectors[rows], self.found[rows])


def read_glove(path: str | os.PathLike, words: Sequence[str], dim: int | None = None
               ) -> GloveMatch:
    """Vectors of ``words`` from the GloVe text file ``path`` (the first occurrence of a word).

    ``dim``: the expected vector size; a line of another size raises a ValueError naming the
    file and line (a truncated download or a file of another GloVe size).
    """
    path = Path(path)
    wanted = {w: i for i, w in enumerate(words)}
    vectors: np.ndarray | None = None if dim is None else np.zeros((len(words), dim), np.float32)
    found = np.zeros(len(words), dtype=bool)
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            word, _, rest = line.rstrip("\n").partition(" ")
            row = wanted.get(word)
            if row is None or found[row]:
                continue
            values = np.array(rest.split(" "), dtype=np.float32)
            if vectors is None:
                dim = len(values)
                vectors = np.zeros((len(words), dim), np.float32)
            if len(values) != dim:
                raise ValueError(f"{path}, line {line_no} (word {word!r}): {len(values)} values, "
                                 f"expected {dim}; is this a complete glove.6B.{dim}d.txt?")
            vectors[row] = values
            found[row] = True
    if vectors is None:  # no wanted word in the file, size unknown
        vectors = np.zeros((len(words), 0), np.float32)
    return GloveMatch(tuple(words), torch.from_numpy(vectors), torch.from_numpy(found))


def init_embedding(embedding: nn.Embedding, match: GloveMatch, name: str = "embedding") -> int:
    """Copy the found GloVe rows into ``embedding`` (row i = ``match.words[i]``); the rest keep
    their initialisation, the padding row stays zero. Returns how many rows were copied."""
    if len(match.words) != embedding.num_embeddings:
        raise ValueError(f"{name}: {len(match.words)} words for an embedding of "
                         f"{embedding.num_embeddings} rows")
    if match.n_found and match.vectors.shape[1] != embedding.embedding_dim:
        raise ValueError(f"{name}: GloVe vectors have {match.vectors.shape[1]} values, the "
                         f"embedding {embedding.embedding_dim}; use the glove.6B."
                         f"{embedding.embedding_dim}d.txt file or change the embedding size")
    found = match.found.clone()
    if embedding.padding_idx is not None:
        found[embedding.padding_idx] = False
    with torch.no_grad():
        embedding.weight[found] = match.vectors[found].to(embedding.weight.dtype)
    n = int(found.sum())
    log.info("%s: %d of %d words initialised from GloVe", name, n, len(match.words))
    return n

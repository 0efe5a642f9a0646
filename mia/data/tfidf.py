"""BAN's question-word co-occurrence matrix (jnhwkim/ban-vqa ``dataset.tfidf_from_questions``).

BAN's default ``--op c`` gives every question word a second 300-d embedding, initialised as
``T @ GloVe``: the average of the GloVe vectors of the words it co-occurs with in questions.
``T`` is built from the train, val and test2015 questions as the reference does, line by line:

1. for every question (files in order, each in file order), its tokens (all of them, uncut):
   every token occurrence adds 1 to ``df[token]``; every pair of positions ``i < j`` (in
   ``itertools.combinations`` order) adds two entries, ``(t_i, t_j)`` and ``(t_j, t_i)``, each of
   value 1;
2. the reference then runs ``for idx, col in enumerate(cols): vals[col] /= df[col]``. It indexes
   ``vals`` by the WORD id ``col``, not by the entry ``idx``, so the intended idf weighting never
   happens; instead entry number ``k < N`` (N = dictionary size, ids in the reference's order of
   first appearance over the dictionary's question files) is divided by ``df[k]`` once per entry
   whose column is word ``k``: its value becomes ``df[k] ** -count_k`` (0 after underflow for
   any frequent word). All other entries stay 1;
3. rows are normalised to sum to 1 (a stochastic matrix), then duplicate entries are summed.

So ``T[a, b] = (number of (a, b) entries, with the first N entries weighted as in 2.) / z[a]``:
a row-normalised co-occurrence count, with a few thousand of the first questions' pairs
weighted down. It is reproduced here exactly (:func:`reference_cooccurrence`, tested against
the reference code), quirk included, because the second embedding's initialisation is what the
switch ``vqa.model.tfidf_embedding`` is about.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SparseMatrix:
    """``T`` in coordinate form over the question vocabulary: ``values[e]`` at
    (``rows[e]``, ``cols[e]``), each pair once, rows summing to 1 (or 0 for a word without
    co-occurrences)."""

    rows: np.ndarray  # (E,) int64
    cols: np.ndarray  # (E,) int64
    values: np.ndarray  # (E,) float64
    size: int

    def dense(self) -> np.ndarray:
        out = np.zeros((self.size, self.size))
        np.add.at(out, (self.rows, self.cols), self.values)
        return out


def _pairs(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All ``i < j`` pairs of a (Q, L) id table, as two flat arrays (a = t_i, b = t_j)."""
    i, j = np.triu_indices(tokens.shape[1], k=1)
    return tokens[:, i].ravel(), tokens[:, j].ravel()


def reference_cooccurrence(questions: Sequence[Sequence[int]], size: int,
                           reference_ids: np.ndarray) -> SparseMatrix:
    """``T`` of ``questions`` (token ids < ``size``, in the reference's order), as
    ``tfidf_from_questions`` computes it.

    ``reference_ids[w]`` is word ``w``'s id in the reference's own dictionary (order of first
    appearance over its dictionary files; -1 for words it does not have, such as ``<pad>``),
    which decides which entries step 2 of the module docstring weights down.
    """
    flat = [w for q in questions for w in q]
    df = np.bincount(np.asarray(flat, dtype=np.int64), minlength=size)  # token occurrences
    a_parts, b_parts = [], []
    by_length: dict[int, list[Sequence[int]]] = {}
    for q in questions:
        if len(q) >= 2:
            by_length.setdefault(len(q), []).append(q)
    for group in by_length.values():
        a, b = _pairs(np.asarray(group, dtype=np.int64))
        a_parts.append(a)
        b_parts.append(b)
    a = np.concatenate(a_parts) if a_parts else np.zeros(0, np.int64)
    b = np.concatenate(b_parts) if b_parts else np.zeros(0, np.int64)
    rows, cols = np.concatenate([a, b]), np.concatenate([b, a])  # both directions
    keys, counts = np.unique(rows * size + cols, return_counts=True)
    values = counts.astype(np.float64)
    as_col = np.bincount(cols, minlength=size)  # entries whose column is each word

    # Step 2: the first N entries, in the reference's order, and their weights.
    n_ref = int((reference_ids >= 0).sum())
    word_of_ref = np.full(n_ref, -1, dtype=np.int64)
    known = np.flatnonzero(reference_ids >= 0)
    word_of_ref[reference_ids[known]] = known
    first: list[tuple[int, int]] = []
    for q in questions:
        if len(first) >= n_ref:
            break
        for i in range(len(q)):
            for j in range(i + 1, len(q)):
                first += [(int(q[i]), int(q[j])), (int(q[j]), int(q[i]))]
    first = first[:n_ref]
    if first:
        words = word_of_ref[:len(first)]
        weights = np.power(df[words].astype(np.float64), -as_col[words].astype(np.float64))
        first_keys = np.array([r * size + c for r, c in first], dtype=np.int64)
        where = np.searchsorted(keys, first_keys)
        np.add.at(values, where, weights - 1.0)  # those entries count w instead of 1
    # Step 3: rows to sum 1, duplicates summed (already, in ``values``).
    rows, cols = keys // size, keys % size
    z = np.bincount(rows, weights=values, minlength=size)
    values = np.divide(values, z[rows], out=np.zeros_like(values), where=z[rows] > 0)
    return SparseMatrix(rows, cols, values, size)


def first_appearance_ids(question_lists: Sequence[Sequence[Sequence[int]]],
                         size: int) -> np.ndarray:
    """Each word's id in a dictionary that numbers words in order of first appearance over
    ``question_lists`` (the reference's ``Dictionary.add_word`` over its question files); -1
    for words that never appear."""
    ids = np.full(size, -1, dtype=np.int64)
    next_id = 0
    for questions in question_lists:
        for q in questions:
            for w in q:
                if ids[w] < 0:
                    ids[w] = next_id
                    next_id += 1
    return ids

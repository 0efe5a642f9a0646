"""Fast CIDEr-D, numerically equal to coco-caption's ``Cider`` (pycocoevalcap ``cider_scorer.py``).

Why a second implementation: SCST needs a reward for every sampled caption of every batch, and
validation needs CIDEr-D every epoch. pycocoevalcap rebuilds every reference's tf-idf vector for
every call with Python dicts; here the references are turned into sparse tf-idf vectors once, and
a batch of candidates is scored with a handful of numpy sorts, searches and bincounts.

The definition followed (every detail as in ``cider_scorer.py``, quirks included):

* n-grams of orders 1..n of the whitespace-split sentence, counted per sentence (term frequency);
* document frequency ``df(g)`` = the number of *images* whose reference set contains ``g``;
  ``log_docs`` = log(number of images in the reference set);
  idf(g) = ``log_docs - log(max(1, df(g)))`` (unseen n-grams get ``log_docs``);
* vector entry = tf * idf, one vector and one L2 norm per n-gram order;
* per reference and order: ``sum_g min(v_cand(g), v_ref(g)) * v_ref(g)``, divided by the product
  of the two norms when both are non-zero (the clipping is CIDEr-D's);
* times the Gaussian length penalty ``e ** (-(delta ** 2) / (2 sigma ** 2))``, where ``delta``
  is the difference of the sentences' *bigram* counts (pycocoevalcap's "length" counts the
  terms of 2-grams, i.e. ``max(words - 1, 0)``: a quirk kept so the numbers agree);
* summed over the references, averaged over the orders, divided by the number of references,
  times 10.

Document frequencies come from the references given to :class:`CiderD` (exactly pycocoevalcap
when the candidates cover those images), or from a larger set passed as a
:class:`DocumentFrequency` (SCST: the training references, as in ruotianluo's CIDEr-D).

N-grams are identified without Python tuples: words get integer ids, and an n-gram is the ids of
its words packed into one 64-bit key (16 bits a word when ``n <= 4`` and the vocabulary allows;
otherwise 32 bits a word in a wider byte key). Both sort and compare exactly, so no hashing and no
collisions.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Key = Hashable
Sentence = str | Sequence[int]

# Ids kept free at the top of the 16-bit range for words that appear only in one candidate: such
# a word can never match a reference, so it only needs an id unique within its candidate.
_LOCAL_IDS = 1024


@dataclass(frozen=True)
class CiderDConfig:
    """CIDEr-D's parameters (coco-caption's defaults)."""

    n: int = 4          # n-gram orders 1..n
    sigma: float = 6.0  # width of the Gaussian length penalty


class _Codec:
    """Word -> id (1-based; 0 pads shorter n-grams) and n-gram -> packed key.

    ``bits`` is fixed when the codec is made, so keys stay comparable while words are added.
    """

    def __init__(self, words: Iterable[Hashable], n: int, vocab: Sequence[str] | None) -> None:
        self.n = n
        self.vocab = list(vocab) if vocab is not None else None
        self.ids: dict[Hashable, int] = {w: i for i, w in enumerate(dict.fromkeys(words), 1)}
        self.bits = 16 if n * 16 <= 64 and len(self.ids) < 2**15 else 32
        self.limit = 2**self.bits - 1 - _LOCAL_IDS
        self._check_size()

    def _check_size(self) -> None:
        if len(self.ids) > self.limit:
            raise ValueError(f"CIDEr-D vocabulary of {len(self.ids)} words exceeds the "
                             f"{self.limit} that {self.bits}-bit word ids hold; build the "
                             "DocumentFrequency from a set that includes the references' words "
                             "(wider ids are then chosen)")

    def extended(self, words: Iterable[Hashable]) -> _Codec:
        """A copy knowing ``words`` too (ids of the known words unchanged)."""
        new = object.__new__(_Codec)
        new.n, new.vocab, new.bits, new.limit = self.n, self.vocab, self.bits, self.limit
        new.ids = dict(self.ids)
        for w in dict.fromkeys(words):
            if w not in new.ids:
                new.ids[w] = len(new.ids) + 1
        new._check_size()
        return new

    def tokens(self, sentence: Any, what: str) -> list[Hashable]:
        """Words of a space-joined string, or of a token-id sequence (through ``vocab`` if set)."""
        if isinstance(sentence, str):
            return sentence.split()
        if hasattr(sentence, "tolist"):  # numpy array / torch tensor
            sentence = sentence.tolist()
        try:
            ids = [int(t) for t in sentence]
        except (TypeError, ValueError) as err:
            raise TypeError(f"CIDEr-D {what}: expected a space-joined string or a sequence of "
                            f"token ids, got {type(sentence).__name__}") from err
        if self.vocab is None:
            return ids
        try:
            return [self.vocab[i] for i in ids]
        except IndexError as err:
            raise ValueError(f"CIDEr-D {what}: token id out of the {len(self.vocab)}-word "
                             "vocabulary") from err

    def encode(self, sentences: Sequence[list[Hashable]], local_unknown: bool
               ) -> tuple[np.ndarray, np.ndarray]:
        """Flat word ids and their sentence index. Unknown words are an error unless
        ``local_unknown``: then they get ids from the reserved top range, unique within their
        sentence only (such a word never matches a reference)."""
        lengths = np.fromiter(map(len, sentences), dtype=np.int64, count=len(sentences))
        ids = list(map(self.ids.get, itertools.chain.from_iterable(sentences)))
        owner = np.repeat(np.arange(len(sentences)), lengths)
        if None in ids:
            if not local_unknown:
                raise ValueError("CIDEr-D: a reference word is missing from the vocabulary")
            top = 2**self.bits - 1
            starts = np.concatenate([[0], np.cumsum(lengths)])
            for s in sorted({int(owner[i]) for i, v in enumerate(ids) if v is None}):
                local: dict[Hashable, int] = {}
                for i in range(int(starts[s]), int(starts[s + 1])):
                    if ids[i] is None:
                        ids[i] = top - local.setdefault(sentences[s][i - int(starts[s])],
                                                        len(local))
                if len(local) > _LOCAL_IDS:
                    raise ValueError(f"CIDEr-D candidate {s}: more than {_LOCAL_IDS} distinct "
                                     "words unknown to the references")
        return np.asarray(ids, dtype=np.int64), owner

    def ngrams(self, ids: np.ndarray, owner: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every n-gram occurrence: packed key, sentence index and order (0-based)."""
        dtype = np.uint16 if self.bits == 16 else np.uint32
        cols = -(-self.n * self.bits // 64) * 64 // self.bits  # whole 64-bit words
        keys, owners, orders = [], [], []
        for k in range(1, self.n + 1):
            m = len(ids) - k + 1
            if m <= 0:
                break
            pos = np.flatnonzero(owner[:m] == owner[k - 1:])
            mat = np.zeros((len(pos), cols), dtype=dtype)
            for j in range(k):
                mat[:, j] = ids[pos + j]
            keys.append(mat)
            owners.append(owner[pos])
            orders.append(np.full(len(pos), k - 1, dtype=np.int64))
        if not keys:
            keys = [np.zeros((0, cols), dtype=dtype)]
            owners = orders = [np.zeros(0, dtype=np.int64)]
        mat = np.ascontiguousarray(np.concatenate(keys))
        flat_keys = mat.view(np.uint64 if cols * self.bits == 64 else f"V{cols * self.bits // 8}")
        return flat_keys.ravel(), np.concatenate(owners), np.concatenate(orders)


def _lookup(table: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Index of each key in the sorted unique ``table``, -1 where absent."""
    if len(table) == 0:
        return np.full(len(keys), -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(table, keys), len(table) - 1)
    return np.where(table[pos] == keys, pos, -1)


@dataclass(frozen=True)
class _Counts:
    """Distinct n-grams per sentence: entries ``(sentence, gram)`` with their term frequency,
    ``gram`` indexing ``table`` (the sorted distinct n-gram keys of these sentences)."""

    table: np.ndarray     # (G,) sorted packed keys
    sentence: np.ndarray  # (E,) int64, ascending
    gram: np.ndarray      # (E,) int64 into table
    order: np.ndarray     # (E,) int64, 0-based
    tf: np.ndarray        # (E,) float64
    length: np.ndarray    # (S,) pycocoevalcap's "length": number of bigrams


def _count(codec: _Codec, sentences: Sequence[list[Hashable]], local_unknown: bool) -> _Counts:
    ids, owner = codec.encode(sentences, local_unknown)
    keys, sent, order = codec.ngrams(ids, owner)
    table, inv = np.unique(keys, return_inverse=True)
    width = max(len(table), 1)
    pair, first, tf = np.unique(sent * width + inv.ravel(), return_index=True, return_counts=True)
    lengths = np.fromiter(map(len, sentences), dtype=np.int64, count=len(sentences))
    bigrams = np.maximum(lengths - 1, 0) if codec.n >= 2 else np.zeros_like(lengths)
    return _Counts(table=table, sentence=pair // width, gram=pair % width, order=order[first],
                   tf=tf.astype(np.float64), length=bigrams)


def _tokenize(codec: _Codec, references: Mapping[Key, Sequence[Sentence]]
              ) -> list[list[list[Hashable]]]:
    docs = []
    for key, refs in references.items():
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"CIDEr-D: references[{key!r}] must be a non-empty list of sentences")
        docs.append([codec.tokens(r, f"reference of {key!r}") for r in refs])
    return docs


def _flatten(docs: list[list[list[Hashable]]]) -> tuple[list[list[Hashable]], np.ndarray]:
    """All sentences and each one's document index."""
    sizes = [len(refs) for refs in docs]
    return list(itertools.chain.from_iterable(docs)), np.repeat(np.arange(len(docs)), sizes)


class DocumentFrequency:
    """Document frequencies of n-grams over a reference set (one document = one image).

    Build it once from the training references for SCST and pass it to every :class:`CiderD`.
    """

    def __init__(self, references: Mapping[Key, Sequence[Sentence]],
                 config: CiderDConfig | None = None, vocab: Sequence[str] | None = None) -> None:
        config = config or CiderDConfig()
        if not references:
            raise ValueError("DocumentFrequency: empty reference set")
        docs = _tokenize(_Codec([], config.n, vocab), references)
        sentences, doc = _flatten(docs)
        codec = _Codec(itertools.chain.from_iterable(sentences), config.n, vocab)
        self._set(config, codec, _count(codec, sentences, local_unknown=False), doc, len(docs))

    def _set(self, config: CiderDConfig, codec: _Codec, counts: _Counts, doc: np.ndarray,
             num_docs: int, join: np.ndarray | None = None) -> None:
        """``join``: the sorted ``doc * len(table) + gram`` of the entries, when already made."""
        self.config, self.codec, self.num_docs = config, codec, num_docs
        self.keys = counts.table
        width = max(len(self.keys), 1)
        if join is None:
            join = np.sort(doc[counts.sentence] * width + counts.gram)
        first = np.concatenate([[True], join[1:] != join[:-1]]) if len(join) else join.astype(bool)
        self.counts = np.bincount(join[first] % width, minlength=len(self.keys)).astype(np.float64)
        self.log_docs = float(np.log(float(num_docs)))

    @classmethod
    def _from_counts(cls, config: CiderDConfig, codec: _Codec, counts: _Counts, doc: np.ndarray,
                     num_docs: int, join: np.ndarray) -> DocumentFrequency:
        new = object.__new__(cls)
        new._set(config, codec, counts, doc, num_docs, join)
        return new

    def __len__(self) -> int:
        return len(self.keys)

    def idf(self, keys: np.ndarray) -> np.ndarray:
        """``log_docs - log(max(1, df))`` of each packed key (df 0 where unseen)."""
        if not len(self.counts):  # no reference has a single word: every n-gram is unseen
            return np.full(len(keys), self.log_docs)
        pos = _lookup(self.keys, keys)
        df = np.where(pos >= 0, self.counts[np.maximum(pos, 0)], 0.0)
        return self.log_docs - np.log(np.maximum(1.0, df))


class CiderD:
    """CIDEr-D of candidates against fixed references (see the module docstring).

    ``references``: ``{key: [sentence, ...]}``, sentences tokenised and space-joined (or token-id
    sequences, mapped through ``vocab`` when given). ``document_frequency``: precomputed from a
    larger set (SCST; its own ``vocab`` then applies); by default computed from ``references``,
    which equals pycocoevalcap's ``Cider`` when the candidates cover every reference image
    (pycocoevalcap takes df from the scored images only).
    """

    def __init__(self, references: Mapping[Key, Sequence[Sentence]], *,
                 document_frequency: DocumentFrequency | None = None,
                 config: CiderDConfig | None = None, vocab: Sequence[str] | None = None) -> None:
        if document_frequency is not None and config is not None \
                and config != document_frequency.config:
            raise ValueError(f"CiderD: config {config} differs from the document frequencies' "
                             f"{document_frequency.config}")
        if not references:
            raise ValueError("CiderD: empty reference set")
        given = document_frequency is not None
        self.config = document_frequency.config if given else config or CiderDConfig()
        self.keys = list(references)
        self._row = {k: i for i, k in enumerate(self.keys)}
        base = document_frequency.codec if given else _Codec([], self.config.n, vocab)
        docs = _tokenize(base, references)
        sentences, doc = _flatten(docs)
        words = itertools.chain.from_iterable(sentences)
        if document_frequency is None:
            self.codec = _Codec(words, self.config.n, vocab)
        else:
            self.codec = document_frequency.codec.extended(words)
        counts = _count(self.codec, sentences, local_unknown=False)
        # Reference entries sorted by (image row, n-gram): a candidate n-gram finds every
        # reference of its image holding it with two binary searches.
        self._gram_table = counts.table
        join = doc[counts.sentence] * max(len(self._gram_table), 1) + counts.gram
        by = np.argsort(join, kind="stable")
        self._join = join[by]
        if document_frequency is None:
            self.df = DocumentFrequency._from_counts(self.config, self.codec, counts, doc,
                                                     len(docs), self._join)
            idf = self.df.log_docs - np.log(np.maximum(1.0, self.df.counts))
        else:
            self.df = document_frequency
            idf = self.df.idf(counts.table)
        n = self.config.n
        values = counts.tf * idf[counts.gram]
        self._nrefs = np.array([len(refs) for refs in docs], dtype=np.int64)
        self._ref_start = np.concatenate([[0], np.cumsum(self._nrefs)])
        self._ref_norm = np.sqrt(np.bincount(counts.sentence * n + counts.order,
                                             weights=values**2, minlength=len(counts.length) * n)
                                 ).reshape(-1, n)
        self._ref_len = counts.length
        self._join_ref = counts.sentence[by]
        self._join_value = values[by]

    def score(self, candidates: Mapping[Key, Sentence]) -> tuple[float, dict[Key, float]]:
        """Mean CIDEr-D over ``candidates`` (one per key) and the score of each key."""
        keys = list(candidates)
        if not keys:
            raise ValueError("CiderD.score: no candidates")
        scores = self.score_batch(keys, [candidates[k] for k in keys])
        return float(np.mean(scores)), dict(zip(keys, scores.tolist(), strict=True))

    def score_batch(self, keys: Sequence[Key], candidates: Sequence[Sentence]) -> np.ndarray:
        """CIDEr-D of each candidate against the references of its key; keys may repeat (several
        samples per image for SCST). Returns ``(len(candidates),)`` float64."""
        if len(keys) != len(candidates):
            raise ValueError(f"CiderD.score_batch: {len(keys)} keys but {len(candidates)} "
                             "candidates")
        rows = np.empty(len(keys), dtype=np.int64)
        for i, key in enumerate(keys):
            row = self._row.get(key)
            if row is None:
                raise KeyError(f"CiderD: candidate key {key!r} has no references; build CiderD "
                               "with the references of every image you score")
            rows[i] = row
        if len(keys) == 0:
            return np.zeros(0)
        n = self.config.n
        sentences = [self.codec.tokens(c, f"candidate for {k!r}")
                     for k, c in zip(keys, candidates, strict=True)]
        cand = _count(self.codec, sentences, local_unknown=True)
        values = cand.tf * self.df.idf(cand.table)[cand.gram]
        cand_norm = np.sqrt(np.bincount(cand.sentence * n + cand.order, weights=values**2,
                                        minlength=len(keys) * n)).reshape(-1, n)

        # Every (candidate, reference of its image) pair, numbered consecutively.
        nrefs = self._nrefs[rows]
        pair_start = np.concatenate([[0], np.cumsum(nrefs)])
        pairs = int(pair_start[-1])
        pair_cand = np.repeat(np.arange(len(keys)), nrefs)
        pair_ref = np.arange(pairs) - pair_start[pair_cand] + self._ref_start[rows][pair_cand]

        # Clipped dot products: join candidate entries with the reference entries of the image.
        gram = _lookup(self._gram_table, cand.table)[cand.gram]
        known = np.flatnonzero(gram >= 0)
        join = rows[cand.sentence[known]] * max(len(self._gram_table), 1) + gram[known]
        lo = np.searchsorted(self._join, join, "left")
        hits = np.searchsorted(self._join, join, "right") - lo
        entry = np.repeat(known, hits)
        ref_entry = np.repeat(lo - np.cumsum(hits) + hits, hits) + np.arange(int(hits.sum()))
        ref = self._join_ref[ref_entry]
        c = cand.sentence[entry]
        pair = pair_start[c] + ref - self._ref_start[rows[c]]
        v_ref = self._join_value[ref_entry]
        dot = np.bincount(pair * n + cand.order[entry],
                          weights=np.minimum(values[entry], v_ref) * v_ref,
                          minlength=pairs * n).reshape(-1, n)

        denom = cand_norm[pair_cand] * self._ref_norm[pair_ref]
        dot = np.where(denom != 0, dot / np.where(denom != 0, denom, 1.0), dot)
        delta = (cand.length[pair_cand] - self._ref_len[pair_ref]).astype(np.float64)
        dot *= np.power(np.e, -(delta**2) / (2 * self.config.sigma**2))[:, None]
        per_cand = np.stack([np.bincount(pair_cand, weights=dot[:, j], minlength=len(keys))
                             for j in range(n)], axis=1)
        return per_cand.mean(axis=1) / nrefs * 10.0

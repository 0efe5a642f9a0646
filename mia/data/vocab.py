"""Word vocabularies: built once from training tokens, stored as a JSON list in store attributes.

The order is fully deterministic (special tokens, then by count descending, ties by word), so the
same data and threshold give the same ids on every machine and a checkpoint's embedding rows
stay meaningful.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
#: Caption vocabulary specials, at ids 0..3 (docs/CONTRACTS.md).
CAPTION_SPECIALS: tuple[str, ...] = (PAD, BOS, EOS, UNK)
#: Question vocabulary specials: 0 pads questions (CONTRACTS.md), 1 stands for unseen words.
QUESTION_SPECIALS: tuple[str, ...] = (PAD, UNK)


@dataclass(frozen=True)
class Vocabulary:
    """An id <-> word mapping; ``words[i]`` is the word of id ``i``."""

    words: tuple[str, ...]
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {w: i for i, w in enumerate(self.words)}
        if len(index) != len(self.words):
            dup = next(w for w in self.words if self.words.count(w) > 1)
            raise ValueError(f"vocabulary has duplicate word {dup!r}")
        if UNK not in index:
            raise ValueError(f"vocabulary needs the {UNK} token to encode unseen words")
        object.__setattr__(self, "index", index)

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self.index

    @property
    def unk_id(self) -> int:
        return self.index[UNK]

    def id(self, word: str) -> int:
        """The id of ``word``, or of ``<unk>``."""
        return self.index.get(word, self.index[UNK])

    def encode(self, tokens: Iterable[str]) -> list[int]:
        return [self.id(t) for t in tokens]

    def decode(self, ids: Iterable[int], *, stop_at_eos: bool = True,
               skip: Sequence[str] = (PAD, BOS)) -> list[str]:
        """Words of ``ids``, dropping ``skip`` tokens and, by default, everything from ``<eos>``."""
        out = []
        for i in ids:
            word = self.words[int(i)]
            if stop_at_eos and word == EOS:
                break
            if word not in skip:
                out.append(word)
        return out


def build_vocabulary(token_lists: Iterable[Iterable[str]], count_threshold: int,
                     specials: Sequence[str] = CAPTION_SPECIALS) -> tuple[Vocabulary, Counter]:
    """Keep words seen at least ``count_threshold`` times, after ``specials``.

    Returns the vocabulary and the full word counts (for reporting coverage).
    """
    if count_threshold < 1:
        raise ValueError(f"count_threshold must be >= 1, got {count_threshold}")
    counts: Counter = Counter()
    for tokens in token_lists:
        counts.update(tokens)
    kept = sorted((w for w, c in counts.items() if c >= count_threshold and w not in specials),
                  key=lambda w: (-counts[w], w))
    return Vocabulary(tuple(specials) + tuple(kept)), counts

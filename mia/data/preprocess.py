"""Raw annotations -> the compact ``captions.h5`` and ``vqa.h5`` stores of docs/CONTRACTS.md.

Everything a training run needs from the annotations is computed here once: vocabularies (from
the training split only, so validation and test words stay unseen), padded id arrays, and VQA
soft targets. The loaders then only gather rows.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from mia.data import store
from mia.data.answers import training_answer
from mia.data.karpathy import SPLIT_CODES, KarpathyImage, read_karpathy
from mia.data.tfidf import first_appearance_ids, reference_cooccurrence
from mia.data.vocab import BOS, EOS, QUESTION_SPECIALS, Vocabulary, build_vocabulary
from mia.data.vqa_v2 import ANSWERS_PER_QUESTION, VQAExample, read_vqa, read_vqa_questions
from mia.io import write_json


@dataclass(frozen=True)
class CaptionPreprocessConfig:
    """``count_threshold``: min train count to keep a word (released: 5); ``max_length``: words
    kept per training caption, ``None`` (the default) keeps them all, as the released data loader
    does (it never truncates; many reimplementations cut at 16)."""

    count_threshold: int = 5
    max_length: int | None = None


#: Question files a VQA vocabulary or BAN's co-occurrence matrix may read: the annotated
#: splits and the evaluation server's test questions (test-dev2015 is a subset of test2015).
QUESTION_FILES = ("train", "val", "test2015", "test-dev2015")


@dataclass(frozen=True)
class VQAPreprocessConfig:
    """The bottom-up-attention-vqa recipe: answers seen ``min_answer_count`` times in
    ``answer_splits`` (3,129 on VQA v2 train+val), questions cut to ``max_question_length``.

    Questions (docs/RECIPE.md, VQA). The defaults here are the project's earlier choices; the
    paper config sets the references' (each a switch):

    * ``tokenizer``: ``reference`` (both references' ``Dictionary.tokenize``: lowercase, drop
      ``,`` and ``?``, ``'s`` -> `` 's``, split on whitespace, so ``t-shirt``, ``1:00``,
      ``don't`` and ``sign.`` stay whole) or ``words`` (:func:`tokenize_question`);
    * ``vocabulary_questions``: the question files whose words make the question vocabulary,
      each word seen ``question_count_threshold`` times there. The references: every word of
      train, val, test2015 and test-dev2015 (``tools/create_dictionary.py``), so a word that
      never occurs in training keeps its GloVe vector instead of becoming ``<unk>``;
    * ``tfidf_questions``: the files BAN's second question embedding is computed from
      (:mod:`mia.data.tfidf`; its ``main.py``: train, val, test2015); empty: not computed.
    """

    min_answer_count: int = 9
    max_question_length: int = 14
    question_count_threshold: int = 1
    answer_splits: tuple[str, ...] = ("train", "val")
    tokenizer: Literal["words", "reference"] = "words"
    vocabulary_questions: tuple[str, ...] = ("train",)
    tfidf_questions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("answer_splits", "vocabulary_questions", "tfidf_questions"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"preprocess.vqa.tokenizer: {self.tokenizer!r} is not one of "
                             f"{sorted(TOKENIZERS)}")
        for name in ("vocabulary_questions", "tfidf_questions"):
            bad = [s for s in getattr(self, name) if s not in QUESTION_FILES]
            if bad:
                raise ValueError(f"preprocess.vqa.{name}: {bad} are not question files; choose "
                                 f"from {list(QUESTION_FILES)}")
        if not self.vocabulary_questions:
            raise ValueError("preprocess.vqa.vocabulary_questions: name at least one question "
                             "file (train)")

    def question_files(self) -> tuple[str, ...]:
        """Every question file this preprocessing reads beyond the annotated splits."""
        extra = dict.fromkeys(self.vocabulary_questions + self.tfidf_questions)
        return tuple(s for s in QUESTION_FILES if s in extra and s not in ("train", "val"))


# --------------------------------------------------------------------------- captions


def encode_captions(token_lists: Sequence[Sequence[str]], vocab_index: Mapping[str, int],
                    unk_id: int, max_length: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``<bos> w1..wn <eos> <pad>..`` rows of width ``max_length + 2`` (n truncated to
    max_length); with ``max_length=None`` nothing is cut and the width is the longest caption's.

    Returns ``(captions (M, width) int32, lengths (M,) int32 = n + 2)``.
    """
    if max_length is None:
        max_length = max((len(t) for t in token_lists), default=0)
    out = np.zeros((len(token_lists), max_length + 2), dtype=np.int32)
    lengths = np.empty(len(token_lists), dtype=np.int32)
    bos, eos = vocab_index[BOS], vocab_index[EOS]
    for row, tokens in enumerate(token_lists):
        ids = [vocab_index.get(t, unk_id) for t in tokens[:max_length]]
        out[row, 0] = bos
        out[row, 1:len(ids) + 1] = ids
        out[row, len(ids) + 1] = eos
        lengths[row] = len(ids) + 2
    return out, lengths


def coco_references(images: Sequence[KarpathyImage]) -> dict:
    """The raw captions of ``images`` in the COCO caption format pycocoevalcap reads."""
    return {
        "info": {"description": "references from the Karpathy split, written by mia-repro"},
        "licenses": [],
        "type": "captions",
        "images": [{"id": img.cocoid, "file_name": img.filename} for img in images],
        "annotations": [{"image_id": img.cocoid, "id": s.sentid, "caption": s.raw}
                        for img in images for s in img.sentences],
    }


def build_caption_store(karpathy_json: str | os.PathLike, out_h5: str | os.PathLike,
                        references_dir: str | os.PathLike,
                        cfg: CaptionPreprocessConfig = CaptionPreprocessConfig()) -> Path:
    """Write ``captions.h5`` and ``references_{train,val,test}.json`` from ``dataset_coco.json``.

    The vocabulary comes from training tokens only (train + restval), images keep Karpathy order.
    Besides the encoded captions, ``caption_text`` keeps every caption's own tokens joined by
    spaces (never ``<unk>``-ed, never cut): the references of validation CIDEr-D
    (``CaptionData.references``). The ``max_length`` attribute is the encoded width minus 2.
    """
    if cfg.max_length is not None and cfg.max_length < 1:
        raise ValueError(f"preprocess.captions.max_length must be >= 1 or null (keep every "
                         f"word), got {cfg.max_length}")
    images = read_karpathy(karpathy_json)
    train_tokens = (s.tokens for img in images if img.store_split == "train" for s in img.sentences)
    vocab, _ = build_vocabulary(train_tokens, cfg.count_threshold)
    token_lists = [s.tokens for img in images for s in img.sentences]
    captions, lengths = encode_captions(token_lists, vocab.index, vocab.unk_id, cfg.max_length)
    image_index = np.repeat(np.arange(len(images), dtype=np.int64),
                            [len(img.sentences) for img in images])
    split = np.array([SPLIT_CODES[img.store_split] for img in images], dtype=np.uint8)
    text = np.array([" ".join(tokens) for tokens in token_lists], dtype=object)
    attrs = {"vocab": list(vocab.words), "max_length": int(captions.shape[1] - 2),
             "count_threshold": cfg.count_threshold}
    with store.atomic_h5(out_h5, kind="captions",
                         config={**asdict(cfg), "karpathy_json": str(karpathy_json)},
                         attrs=attrs) as f:
        f.create_dataset("image_ids", data=np.array([img.cocoid for img in images],
                                                    dtype=np.int64))
        f.create_dataset("split", data=split)
        f.create_dataset("captions", data=captions,
                         chunks=(1, captions.shape[1]) if len(captions) else None)
        f.create_dataset("caption_image_index", data=image_index)
        f.create_dataset("caption_lengths", data=lengths)
        f.create_dataset("caption_text", data=text, dtype=h5py.string_dtype())
    for name in SPLIT_CODES:
        subset = [img for img in images if img.store_split == name]
        write_json(Path(references_dir) / f"references_{name}.json", coco_references(subset),
                   indent=None)
    return Path(out_h5)


# --------------------------------------------------------------------------- VQA

# Answers are normalised as the training side of bottom-up-attention-vqa does
# (tools/compute_softscore.py; mia.data.answers.training_answer): every answer, always. The
# official metric applies the same steps only to questions whose humans disagree
# (mia.evaluation.vqa); the two uses are kept apart on purpose.


_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)*")


def reference_tokenize(text: str) -> list[str]:
    """Both VQA references' ``Dictionary.tokenize``: lowercase, ``,`` and ``?`` removed,
    ``'s`` split off (``man's -> man 's``), then split on whitespace; everything else, other
    punctuation included, stays in the word (``t-shirt``, ``1:00``, ``don't``, ``sign.``)."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's")
    return text.split()


def tokenize_question(text: str) -> list[str]:
    """Lowercase words; clitics split off as GloVe's (Stanford) tokens: ``man's -> man 's``,
    ``don't -> do n't``."""
    out: list[str] = []
    for word in _WORD.findall(text.lower()):
        if word.endswith("n't") and len(word) > 3:
            out += [word[:-3], "n't"]
        elif "'" in word:
            head, tail = word.split("'", 1)
            out += [head, "'" + tail]
        else:
            out.append(word)
    return out


#: ``preprocess.vqa.tokenizer`` -> the function.
TOKENIZERS = {"words": tokenize_question, "reference": reference_tokenize}


_SOFT_SCORES = (0.0, 0.3, 0.6, 0.9)


def soft_score(count: int) -> float:
    """Target score of an answer given by ``count`` of the 10 humans (bottom-up-attention-vqa):
    0 -> 0, 1 -> 0.3, 2 -> 0.6, 3 -> 0.9, >= 4 -> 1; a smooth stand-in for min(1, count / 3)."""
    return _SOFT_SCORES[count] if count < len(_SOFT_SCORES) else 1.0


def answer_targets(answers: Sequence[str], answer_index: Mapping[str, int]
                   ) -> tuple[list[int], list[float]]:
    """Labels (ascending) and soft scores of the candidate answers among 10 raw human answers.

    Each human answer is counted under :func:`~mia.data.answers.training_answer`, as the
    reference's ``compute_target`` docstring requires ("answers_dset should be preprocessed");
    its ``__main__`` passes the raw annotations instead, which differs only for human answers
    that are not already normalised (few in VQA v2: "Yes", "two", "red.").
    """
    counts = Counter(training_answer(a) for a in answers)
    labelled = sorted((answer_index[a], soft_score(c)) for a, c in counts.items()
                      if a in answer_index)
    return [lab for lab, _ in labelled], [s for _, s in labelled]


def _read_splits(questions: Mapping[str, str | os.PathLike],
                 annotations: Mapping[str, str | os.PathLike]) -> dict[str, list[VQAExample]]:
    unknown = (set(questions) | set(annotations)) - set(SPLIT_CODES)
    if unknown:
        raise ValueError(f"unknown VQA split(s) {sorted(unknown)}; use {sorted(SPLIT_CODES)}")
    missing = set(annotations) - set(questions)
    if missing:
        raise ValueError(f"annotations given for split(s) {sorted(missing)} without questions")
    return {name: read_vqa(questions[name], annotations.get(name))
            for name in SPLIT_CODES if name in questions}


def build_vqa_store(questions_paths_by_split: Mapping[str, str | os.PathLike],
                    annotations_paths_by_split: Mapping[str, str | os.PathLike],
                    out_h5: str | os.PathLike,
                    cfg: VQAPreprocessConfig = VQAPreprocessConfig(),
                    extra_questions: Mapping[str, str | os.PathLike] | None = None) -> Path:
    """Write ``vqa.h5``: encoded questions, answer vocabulary and sparse soft targets.

    Splits are ``train``/``val``/``test``; test has questions only (its labels stay -1).
    ``extra_questions``: the unannotated question files (``test2015``, ``test-dev2015``) that
    ``cfg.vocabulary_questions`` or ``cfg.tfidf_questions`` name; their questions are only read
    for words, never stored. With ``cfg.tfidf_questions`` the store also holds BAN's
    co-occurrence matrix (``tfidf_rows``, ``tfidf_cols``, ``tfidf_values``; :mod:`mia.data.tfidf`).
    """
    tokenize = TOKENIZERS[cfg.tokenizer]
    splits = _read_splits(questions_paths_by_split, annotations_paths_by_split)
    examples = [ex for name in splits for ex in splits[name]]
    split = np.concatenate([np.full(len(splits[n]), SPLIT_CODES[n], np.uint8) for n in splits])
    question_ids = np.array([ex.question_id for ex in examples], dtype=np.int64)
    if len(np.unique(question_ids)) != len(question_ids):
        raise ValueError("a question_id occurs in two splits; pass each split's files once")

    answer_counts = Counter(training_answer(ex.annotation.multiple_choice_answer)
                            for n in cfg.answer_splits for ex in splits.get(n, [])
                            if ex.annotation is not None)
    answers = sorted((a for a, c in answer_counts.items() if c >= cfg.min_answer_count),
                     key=lambda a: (-answer_counts[a], a))
    if not answers:
        raise ValueError(f"no answer occurs {cfg.min_answer_count} times in {cfg.answer_splits}; "
                         "lower min_answer_count or check the annotations")
    answer_index = {a: i for i, a in enumerate(answers)}

    tokens = [tokenize(ex.question.question) for ex in examples]
    files = _question_file_tokens(cfg, splits, tokens, split, extra_questions or {}, tokenize)
    qvocab, _ = build_vocabulary((t for name in cfg.vocabulary_questions for t in files[name]),
                                 cfg.question_count_threshold, QUESTION_SPECIALS)
    questions = np.zeros((len(examples), cfg.max_question_length), dtype=np.int32)
    labels = np.full((len(examples), ANSWERS_PER_QUESTION), -1, dtype=np.int32)
    scores = np.zeros((len(examples), ANSWERS_PER_QUESTION), dtype=np.float32)
    for row, (ex, toks) in enumerate(zip(examples, tokens, strict=True)):
        ids = qvocab.encode(toks[:cfg.max_question_length])
        questions[row, :len(ids)] = ids
        if ex.annotation is not None:
            labs, scs = answer_targets(ex.annotation.answers, answer_index)
            labels[row, :len(labs)] = labs
            scores[row, :len(scs)] = scs

    image_ids, image_index = np.unique([ex.image_id for ex in examples], return_inverse=True)
    datasets = {"question_ids": question_ids,
                "question_image_index": image_index.astype(np.int64), "questions": questions,
                "split": split, "answer_labels": labels, "answer_scores": scores}
    if cfg.tfidf_questions:
        encoded = {name: [qvocab.encode(t) for t in files[name]] for name in files}
        matrix = reference_cooccurrence(
            [q for name in cfg.tfidf_questions for q in encoded[name]], len(qvocab),
            first_appearance_ids([encoded[n] for n in cfg.vocabulary_questions], len(qvocab)))
        datasets.update(tfidf_rows=matrix.rows.astype(np.int32),
                        tfidf_cols=matrix.cols.astype(np.int32),
                        tfidf_values=matrix.values.astype(np.float32))
    store.write_store(
        out_h5, kind="vqa", image_ids=image_ids, datasets=datasets,
        config={**asdict(cfg), "questions": {k: str(v) for k, v in questions_paths_by_split.items()},
                "annotations": {k: str(v) for k, v in annotations_paths_by_split.items()},
                "extra_questions": {k: str(v) for k, v in (extra_questions or {}).items()}},
        attrs={"question_vocab": list(qvocab.words), "answer_vocab": answers,
               "max_question_length": cfg.max_question_length,
               "min_answer_count": cfg.min_answer_count, "tokenizer": cfg.tokenizer},
    )
    return Path(out_h5)


def _question_file_tokens(cfg: VQAPreprocessConfig, splits: Mapping[str, list[VQAExample]],
                          tokens: Sequence[list[str]], split: np.ndarray,
                          extra: Mapping[str, str | os.PathLike], tokenize: Any
                          ) -> dict[str, list[list[str]]]:
    """Tokens of every question file the vocabulary or the co-occurrence matrix reads, each in
    file order: ``train``/``val`` from the annotated splits, the rest from ``extra``."""
    out: dict[str, list[list[str]]] = {}
    for name in dict.fromkeys(cfg.vocabulary_questions + cfg.tfidf_questions):
        if name in ("train", "val"):
            if name not in splits:
                raise ValueError(f"preprocess.vqa: {name} questions are needed for the "
                                 "vocabulary or tf-idf but were not given")
            out[name] = [t for t, s in zip(tokens, split, strict=True) if s == SPLIT_CODES[name]]
        else:
            if name not in extra:
                raise ValueError(
                    f"preprocess.vqa.vocabulary_questions/tfidf_questions name {name}, but its "
                    f"questions file was not given (v2_OpenEnded_mscoco_{name}_questions.json "
                    "from v2_Questions_Test_mscoco.zip); pass it or drop it from the config")
            out[name] = [tokenize(q.question) for q in read_vqa_questions(extra[name])]
    return out


def build_vqa_test_store(questions_path: str | os.PathLike, vocab_store: str | os.PathLike,
                         out_h5: str | os.PathLike,
                         subsets: Mapping[str, str | os.PathLike] | None = None) -> Path:
    """Write a ``vqa`` store of test questions (no answers) in the vocabularies of ``vocab_store``.

    The evaluation-server runs answer VQA v2's test2015 questions with a model trained on
    ``vqa.h5``; their images are not Karpathy images, so they get stores of their own, and the
    questions must be encoded with exactly the training vocabulary (words it lacks become
    ``<unk>``) and cut at the same length. Every question is in the ``test`` split, with labels
    -1. ``subsets`` (e.g. ``{"test-dev": path}``) are questions files that must be subsets of
    ``questions_path`` (same question ids and images): test-dev is answered from this store too.
    """
    with store.open_store(vocab_store, "vqa") as f:
        attrs = store.read_attrs(f)
    qvocab = Vocabulary(tuple(attrs["question_vocab"]))
    max_length = int(attrs["max_question_length"])
    tokenize = TOKENIZERS[str(attrs.get("tokenizer", "words"))]  # the training store's
    examples = read_vqa(questions_path)
    if not examples:
        raise ValueError(f"{questions_path}: no questions")
    image_of = {ex.question_id: ex.image_id for ex in examples}
    for name, path in (subsets or {}).items():
        for q in read_vqa_questions(path):
            if image_of.get(q.question_id) != q.image_id:
                raise ValueError(
                    f"{path}: {name} question {q.question_id} (image {q.image_id}) is not in "
                    f"{questions_path}; both must come from the same v2_Questions_Test_mscoco.zip")
    questions = np.zeros((len(examples), max_length), dtype=np.int32)
    for row, ex in enumerate(examples):
        ids = qvocab.encode(tokenize(ex.question.question)[:max_length])
        questions[row, :len(ids)] = ids
    image_ids, image_index = np.unique([ex.image_id for ex in examples], return_inverse=True)
    n = len(examples)
    store.write_store(
        out_h5, kind="vqa", image_ids=image_ids,
        datasets={"question_ids": np.array([ex.question_id for ex in examples], np.int64),
                  "question_image_index": image_index.astype(np.int64), "questions": questions,
                  "split": np.full(n, SPLIT_CODES["test"], np.uint8),
                  "answer_labels": np.full((n, ANSWERS_PER_QUESTION), -1, np.int32),
                  "answer_scores": np.zeros((n, ANSWERS_PER_QUESTION), np.float32)},
        config={"questions": {"test": str(questions_path)}, "vocab_store": str(vocab_store),
                "subsets": {k: str(v) for k, v in (subsets or {}).items()}},
        attrs={"question_vocab": list(qvocab.words), "answer_vocab": list(attrs["answer_vocab"]),
               "max_question_length": max_length,
               "min_answer_count": attrs["min_answer_count"],
               "tokenizer": str(attrs.get("tokenizer", "words"))},
    )
    return Path(out_h5)

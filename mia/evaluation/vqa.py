"""VQA accuracy as the official VQA evaluation (``vqaEval.py`` of the VQA API) computes it.

The official script cannot be fetched here, so its rules are written out below, each with what
it does; the tests work examples of every rule by hand.

Per question (``evaluate``):

1. The result answer ALWAYS has ``\n`` and ``\t`` replaced by spaces, is stripped, then goes
   through ``processPunctuation`` and ``processDigitArticle`` (below).
2. The 10 human answers are used as stored, except that when they are NOT all identical (the
   official ``len(set(gtAnswers)) > 1``) each gets ``processPunctuation`` - and only that: no
   lowercasing, number words, articles, contractions or stripping. So a unanimous "two" (or
   "red.") never matches any result, since the result is always normalised to "2" ("red"); and
   a non-unanimous human "red!" becomes "red " (trailing space) and never matches either. VQA v2's
   stored answers are already normalised, which is why these quirks rarely bite; kept.
3. For each human answer i: ``acc_i = min(1, #{j != i : answer_j == result} / 3)``; the
   question's accuracy is the mean of the 10 ``acc_i`` (so 0, 1, 2, 3, >=4 matching humans give
   0, 0.3, 0.6, 0.9, 1).
4. ``perQuestion`` = round(100 * accuracy, 2); ``overall``, ``perQuestionType`` and
   ``perAnswerType`` = round(100 * mean of the unrounded accuracies, 2).

``processPunctuation(text)``: for each mark of ``_PUNCT`` (note: no apostrophe, colon or period),
if the ORIGINAL text has the mark followed by a space or preceded by one, or the text has a
digit-comma-digit (``_COMMA_STRIP``, e.g. "1,000"), the mark is deleted; otherwise it becomes a
space. Then every period not followed by a digit is deleted (``_PERIOD_STRIP``; its ``(?!<=\\d)``
is a typo for a look-behind and is a no-op, so "2.5" and ".5" keep their period, "a.m." loses
both). The official call passes ``re.UNICODE`` as ``sub``'s third positional argument, which is
``count``: at most 32 periods are deleted. Kept.

``processDigitArticle(text)``: lowercase, split on whitespace, number words "none"/"zero".."ten"
become digits, the articles "a", "an", "the" are dropped, then each word found in the official
contractions map is replaced (the map fixes missing apostrophes, "dont" -> "don't", with the
official table's oddities, e.g. "somebody'd" -> "somebodyd" and capitalised keys that can never
match after lowercasing), words joined by single spaces.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mia.data.errors import DataFormatError, load_json, load_records, require, require_list
from mia.io import write_json

_PUNCT: tuple[str, ...] = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
                           ">", "<", "@", "`", ",", "?", "!")
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_PERIOD_STRIP_COUNT = int(re.UNICODE)  # 32: the official call's accidental ``count``
_NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
# The official contractions table, entry for entry.
_CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}


class VQAEvalError(ValueError):
    """Results, questions and annotations do not cover the same questions."""


def clean_whitespace(text: str) -> str:
    """Rule 1's first step: newlines and tabs to spaces, then strip."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
    """The official ``processPunctuation`` (see the module docstring)."""
    strip_all = _COMMA_STRIP.search(text) is not None
    out = text
    for p in _PUNCT:
        if p + " " in text or " " + p in text or strip_all:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, _PERIOD_STRIP_COUNT)


def process_digit_article(text: str) -> str:
    """The official ``processDigitArticle`` (see the module docstring)."""
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(answer: str) -> str:
    """A predicted answer as the official evaluation compares it (rule 1)."""
    return process_digit_article(process_punctuation(clean_whitespace(answer)))


def question_accuracy(result: str, human_answers: Sequence[str]) -> float:
    """Rules 1-3 for one question: the mean over the humans of min(1, matching others / 3)."""
    res = normalize_answer(result)
    humans = list(human_answers)
    if len(set(humans)) > 1:
        humans = [process_punctuation(a) for a in humans]
    accs = []
    for i in range(len(humans)):
        matching = sum(1 for j, a in enumerate(humans) if j != i and a == res)
        accs.append(min(1, float(matching) / 3))
    return float(sum(accs)) / len(accs)


@dataclass(frozen=True)
class VQAQuestion:
    question_id: int
    question_type: str
    answer_type: str
    answers: tuple[str, ...]


@dataclass(frozen=True)
class VQAEvalConfig:
    """Decimals of the reported percentages (the official ``n=2``)."""

    decimals: int = 2


def load_annotations(path: str | os.PathLike | Mapping[str, Any]) -> dict[int, VQAQuestion]:
    """``{question_id: VQAQuestion}`` from a VQA v2 annotations file (or its parsed dict)."""
    data, source = ((path, "<annotations dict>") if isinstance(path, Mapping)
                    else (load_json(path), str(path)))
    out: dict[int, VQAQuestion] = {}
    for i, ann in enumerate(require_list(data, "annotations", source)):
        rec = f"annotations[{i}]"
        qid = require(ann, "question_id", int, source, rec)
        answers = require(ann, "answers", list, source, rec)
        if not answers:
            raise DataFormatError(source, f"question {qid}", "answers", "no human answers")
        texts = tuple(require(a, "answer", str, source, f"question {qid} answers[{k}]")
                      for k, a in enumerate(answers))
        if qid in out:
            raise DataFormatError(source, rec, "question_id", f"question {qid} appears twice")
        out[qid] = VQAQuestion(qid, require(ann, "question_type", str, source, rec),
                               require(ann, "answer_type", str, source, rec), texts)
    return out


def load_question_ids(path: str | os.PathLike | Mapping[str, Any]) -> list[int]:
    """Question ids of a VQA questions file, in file order; a repeated id is an error."""
    data, source = ((path, "<questions dict>") if isinstance(path, Mapping)
                    else (load_json(path), str(path)))
    ids: list[int] = []
    seen: set[int] = set()
    for i, q in enumerate(require_list(data, "questions", source)):
        qid = require(q, "question_id", int, source, f"questions[{i}]")
        if qid in seen:
            raise DataFormatError(source, f"questions[{i}]", "question_id",
                                  f"question {qid} appears twice")
        seen.add(qid)
        ids.append(qid)
    return ids


def load_results(results: str | os.PathLike | Sequence[Mapping[str, Any]]
                 ) -> tuple[dict[int, str], str]:
    """``{question_id: answer}`` of a results list ``[{"question_id", "answer"}]``."""
    data, source = load_records(results, '{"question_id": int, "answer": str}')
    out: dict[int, str] = {}
    for i, item in enumerate(data):
        qid = require(item, "question_id", int, source, f"[{i}]")
        answer = require(item, "answer", str, source, f"[{i}]")
        if qid in out:
            raise VQAEvalError(f"{source}: [{i}]: question {qid} has more than one answer; "
                               "keep one answer per question")
        out[qid] = answer
    return out, source


def _check_cover(expected: Sequence[int], expected_source: str, got: Mapping[int, Any],
                 got_source: str, what: str = "answer") -> None:
    wanted = set(expected)
    extra = [q for q in got if q not in wanted]
    if extra:
        raise VQAEvalError(f"{got_source}: question {extra[0]} is not in {expected_source} "
                           f"({len(extra)} such question(s)); use the {what}s of the questions "
                           "of that file")
    missing = [q for q in expected if q not in got]
    if missing:
        raise VQAEvalError(f"{got_source}: no {what} for question {missing[0]} of "
                           f"{expected_source} ({len(missing)} missing); every question needs "
                           f"exactly one {what}")


def evaluate_vqa(questions: str | os.PathLike | Mapping[str, Any],
                 annotations: str | os.PathLike | Mapping[str, Any],
                 results: str | os.PathLike | Sequence[Mapping[str, Any]],
                 config: VQAEvalConfig | None = None) -> dict[str, Any]:
    """Official VQA accuracy in percent: ``{"overall", "perAnswerType", "perQuestionType",
    "perQuestion"}`` (``perQuestion`` keyed by question id)."""
    config = config or VQAEvalConfig()
    qsource = "<questions dict>" if isinstance(questions, Mapping) else str(questions)
    asource = "<annotations dict>" if isinstance(annotations, Mapping) else str(annotations)
    question_ids = load_question_ids(questions)
    anns = load_annotations(annotations)
    _check_cover(question_ids, qsource, anns, asource, "annotation")
    answers, rsource = load_results(results)
    _check_cover(question_ids, qsource, answers, rsource)

    def pct(values: list[float]) -> float:
        return round(100 * float(sum(values)) / len(values), config.decimals)

    accs: list[float] = []
    by_question_type: dict[str, list[float]] = {}
    by_answer_type: dict[str, list[float]] = {}
    per_question: dict[int, float] = {}
    for qid in question_ids:
        q = anns[qid]
        acc = question_accuracy(answers[qid], q.answers)
        accs.append(acc)
        by_question_type.setdefault(q.question_type, []).append(acc)
        by_answer_type.setdefault(q.answer_type, []).append(acc)
        per_question[qid] = round(100 * acc, config.decimals)
    if not accs:
        raise VQAEvalError(f"{qsource}: no questions to evaluate")
    return {
        "overall": pct(accs),
        "perAnswerType": {t: pct(v) for t, v in by_answer_type.items()},
        "perQuestionType": {t: pct(v) for t, v in by_question_type.items()},
        "perQuestion": per_question,
    }


def write_test_server_results(answers: Mapping[int, str] | Sequence[Mapping[str, Any]],
                              questions: str | os.PathLike | Mapping[str, Any],
                              out: str | os.PathLike) -> Path:
    """Write the file the VQA evaluation server takes for test-dev / test-std:
    ``[{"question_id": int, "answer": str}, ...]``, one entry per question of ``questions`` (in
    its order). Every question must be answered exactly once, nothing else; the file is written
    atomically so a failed run never leaves a partial upload."""
    if isinstance(answers, Mapping):
        by_id, source = {}, "<answers mapping>"
        for qid, answer in answers.items():
            if not isinstance(qid, int) or isinstance(qid, bool) or not isinstance(answer, str):
                raise VQAEvalError(f"{source}: question {qid!r}: expected int id -> str answer, "
                                   f"got {type(qid).__name__} -> {type(answer).__name__}")
            by_id[qid] = answer
    else:
        by_id, source = load_results(answers)
    qsource = "<questions dict>" if isinstance(questions, Mapping) else str(questions)
    question_ids = load_question_ids(questions)
    _check_cover(question_ids, qsource, by_id, source)
    return write_json(out, [{"question_id": qid, "answer": by_id[qid]} for qid in question_ids],
                      indent=None)

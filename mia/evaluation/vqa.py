"""VQA accuracy exactly as the CURRENT official evaluation computes it.

The reference is GT-Vision-Lab/VQA, ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` at its
last commit, a013f00 "Fixed processing answers bug" (2021). Per question (``evaluate``):

1. Every human answer and the model's answer: ``\n`` and ``\t`` become spaces, then strip.
2. ONLY when the 10 human answers (after step 1) are not all identical
   (``len(set(gtAnswers)) > 1``), each human answer AND the model's answer go through
   ``processPunctuation`` and then ``processDigitArticle`` (:mod:`mia.data.answers`). When the
   humans are unanimous nothing more is normalised on either side: against ten "yes." the answer
   "yes." scores 100 while "Yes." and "yes" score 0; against ten "yes", "Yes" scores 0.
3. For each human answer record h: the others are the records that are not EQUAL to h, compared as
   whole dicts (``item != gtAnsDatum``; in VQA v2 every record has its own ``answer_id``, so this
   is "the other nine"; records that are identical in every field drop out together);
   ``acc_h = min(1, #{others whose answer == model answer} / 3)``. The question's accuracy is the
   mean of the ``acc_h``: 0, 1, 2, 3, >= 4 matching humans out of 10 give 0, .3, .6, .9, 1.
4. ``perQuestion`` = round(100 * accuracy, 2); ``overall``, ``perQuestionType`` and
   ``perAnswerType`` = round(100 * sum / count, 2) of the unrounded accuracies, summed in the
   annotation file's order. ``round`` is Python 2's, the interpreter the reference is written
   for: an exact binary tie rounds half away from zero (33.625 -> 33.63), where a Python 3 port
   of the script rounds half to even (33.62). Only exact ties differ.

Before that commit (the copy this module used to follow) the model's answer was always
normalised and the humans only got ``processPunctuation``; on a held-out set of 900 questions
that older rule disagreed with the current code on 393. See tests/test_eval_vqa.py for a worked
example of every branch.

The reference trusts its inputs; here the results, questions and annotations must cover the same
questions, each answered once, and an annotation's ``image_id`` must equal its question's, or a
:class:`VQAEvalError` / :class:`~mia.data.errors.DataFormatError` names the file, record and field.
"""

from __future__ import annotations

import decimal
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mia.data.answers import clean_whitespace, process_digit_article, process_punctuation
from mia.data.errors import DataFormatError, load_json, load_records, require, require_list
from mia.io import write_json


class VQAEvalError(ValueError):
    """Results, questions and annotations do not cover the same questions."""


def _scoring_normalised(text: str) -> str:
    return process_digit_article(process_punctuation(text))


def question_accuracy(result: str, human_answers: Sequence[str | Mapping[str, Any]]) -> float:
    """Rules 1-3 for one question (0..1). ``human_answers`` are the annotation's answer records
    (``{"answer", "answer_confidence", "answer_id"}``) or plain strings, which are treated as
    records of distinct humans."""
    records = [dict(a) if isinstance(a, Mapping) else {"answer": a, "answer_id": i}
               for i, a in enumerate(human_answers)]
    if not records:
        raise ValueError("a question needs at least one human answer")
    for record in records:
        record["answer"] = clean_whitespace(record["answer"])
    answer = clean_whitespace(result)
    if len({r["answer"] for r in records}) > 1:
        for record in records:
            record["answer"] = _scoring_normalised(record["answer"])
        answer = _scoring_normalised(answer)
    accs = []
    for record in records:
        matching = sum(1 for other in records if other != record and other["answer"] == answer)
        accs.append(min(1.0, matching / 3))
    return sum(accs) / len(accs)


def round_like_reference(value: float, decimals: int) -> float:
    """Python 2's ``round``: the exact binary value rounded half away from zero (rule 4)."""
    quantum = decimal.Decimal(1).scaleb(-decimals)
    return float(decimal.Decimal(value).quantize(quantum, rounding=decimal.ROUND_HALF_UP))


@dataclass(frozen=True)
class AnnotatedQuestion:
    """One annotation as the metric reads it; ``answers`` are the whole answer records."""

    question_id: int
    image_id: int
    question_type: str
    answer_type: str
    answers: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class VQAEvalConfig:
    """Decimals of the reported percentages (the official ``n=2``)."""

    decimals: int = 2


def _parsed(path: str | os.PathLike | Mapping[str, Any], what: str) -> tuple[Any, str]:
    if isinstance(path, Mapping):
        return path, f"<{what} dict>"
    return load_json(path), str(path)


def load_annotations(path: str | os.PathLike | Mapping[str, Any]
                     ) -> dict[int, AnnotatedQuestion]:
    """``{question_id: AnnotatedQuestion}`` in file order, from a VQA v2 annotations file (or
    its parsed dict)."""
    data, source = _parsed(path, "annotations")
    out: dict[int, AnnotatedQuestion] = {}
    for i, ann in enumerate(require_list(data, "annotations", source)):
        rec = f"annotations[{i}]"
        qid = require(ann, "question_id", int, source, rec)
        answers = require(ann, "answers", list, source, rec)
        if not answers:
            raise DataFormatError(source, f"{rec} (question {qid})", "answers", "no human answers")
        for k, a in enumerate(answers):
            require(a, "answer", str, source, f"{rec} (question {qid}) answers[{k}]")
        if qid in out:
            raise DataFormatError(source, rec, "question_id", f"question {qid} appears twice")
        out[qid] = AnnotatedQuestion(
            qid, require(ann, "image_id", int, source, rec),
            require(ann, "question_type", str, source, rec),
            require(ann, "answer_type", str, source, rec), tuple(answers))
    return out


def load_question_images(path: str | os.PathLike | Mapping[str, Any]) -> dict[int, int]:
    """``{question_id: image_id}`` of a VQA questions file, in file order; a repeated id is an
    error."""
    data, source = _parsed(path, "questions")
    out: dict[int, int] = {}
    for i, q in enumerate(require_list(data, "questions", source)):
        rec = f"questions[{i}]"
        qid = require(q, "question_id", int, source, rec)
        if qid in out:
            raise DataFormatError(source, rec, "question_id", f"question {qid} appears twice")
        out[qid] = require(q, "image_id", int, source, rec)
    return out


def load_question_ids(path: str | os.PathLike | Mapping[str, Any]) -> list[int]:
    """Question ids of a VQA questions file, in file order."""
    return list(load_question_images(path))


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


def _check_images(questions: Mapping[int, int], qsource: str,
                  anns: Mapping[int, AnnotatedQuestion], asource: str) -> None:
    """An annotation must describe the image its question is about: a shifted or mixed-up file
    would otherwise be scored silently (the reference never looks)."""
    for qid, ann in anns.items():
        if ann.image_id != questions[qid]:
            raise DataFormatError(
                asource, f"question {qid}", "image_id",
                f"{ann.image_id} differs from image_id {questions[qid]} of that question in "
                f"{qsource}; use the annotations file of the same split and version")


def evaluate_vqa(questions: str | os.PathLike | Mapping[str, Any],
                 annotations: str | os.PathLike | Mapping[str, Any],
                 results: str | os.PathLike | Sequence[Mapping[str, Any]],
                 config: VQAEvalConfig | None = None) -> dict[str, Any]:
    """Official VQA accuracy in percent: ``{"overall", "perAnswerType", "perQuestionType",
    "perQuestion"}`` (``perQuestion`` keyed by question id)."""
    config = config or VQAEvalConfig()
    question_images = load_question_images(questions)
    qsource = "<questions dict>" if isinstance(questions, Mapping) else str(questions)
    asource = "<annotations dict>" if isinstance(annotations, Mapping) else str(annotations)
    anns = load_annotations(annotations)
    _check_cover(list(question_images), qsource, anns, asource, "annotation")
    _check_images(question_images, qsource, anns, asource)
    answers, rsource = load_results(results)
    _check_cover(list(question_images), qsource, answers, rsource)
    if not anns:
        raise VQAEvalError(f"{qsource}: no questions to evaluate")

    def pct(values: list[float]) -> float:
        return round_like_reference(100 * float(sum(values)) / len(values), config.decimals)

    accs: list[float] = []
    by_question_type: dict[str, list[float]] = {}
    by_answer_type: dict[str, list[float]] = {}
    per_question: dict[int, float] = {}
    for qid, ann in anns.items():  # the reference's order: getQuesIds() of the annotations
        acc = question_accuracy(answers[qid], ann.answers)
        accs.append(acc)
        by_question_type.setdefault(ann.question_type, []).append(acc)
        by_answer_type.setdefault(ann.answer_type, []).append(acc)
        per_question[qid] = round_like_reference(100 * acc, config.decimals)
    return {
        "overall": pct(accs),
        "perAnswerType": {t: pct(v) for t, v in by_answer_type.items()},
        "perQuestionType": {t: pct(v) for t, v in by_question_type.items()},
        "perQuestion": per_question,
    }


#: The ``data_subtype`` of the question files the evaluation server scores (test-dev and
#: test-std; test-std's file holds every test2015 question).
SERVER_SUBTYPES = ("test-dev2015", "test2015")


def _check_server_split(data: Any, source: str) -> None:
    """Refuse questions of another split (``val2014``): answers to them would be uploaded as a
    test-dev/test-std result and scored against nothing."""
    subtype = data.get("data_subtype") if isinstance(data, Mapping) else None
    if subtype is None:
        return  # a hand-made questions list: nothing to check against
    if subtype not in SERVER_SUBTYPES:
        raise VQAEvalError(f"{source}: questions of split {subtype!r} (its data_subtype); the "
                           "evaluation server scores test-dev2015 (test-dev) and test2015 "
                           "(test-std) questions only: pass "
                           "v2_OpenEnded_mscoco_test-dev2015_questions.json or "
                           "v2_OpenEnded_mscoco_test2015_questions.json")


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
    data, qsource = _parsed(questions, "questions")
    _check_server_split(data, qsource)
    question_ids = load_question_ids(questions)  # parsed again: its errors name the file
    _check_cover(question_ids, qsource, by_id, source)
    return write_json(out, [{"question_id": qid, "answer": by_id[qid]} for qid in question_ids],
                      indent=None)

"""Readers for VQA v2: ``v2_OpenEnded_mscoco_*_questions.json`` and ``v2_mscoco_*_annotations.json``.

Questions and annotations come in separate files joined by ``question_id``; a mismatch between
them (a question without annotation, disagreeing image ids) silently corrupts training targets,
so :func:`join_vqa` checks they agree. Each annotation carries exactly 10 human answers; test
splits have questions only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mia.data.errors import DataFormatError, load_json, require, require_list

#: Humans asked per question in VQA v2.
ANSWERS_PER_QUESTION = 10
ANSWER_TYPES = ("yes/no", "number", "other")


@dataclass(frozen=True)
class VQAQuestion:
    question_id: int
    image_id: int
    question: str


@dataclass(frozen=True)
class VQAAnnotation:
    question_id: int
    image_id: int
    question_type: str
    answer_type: str
    multiple_choice_answer: str
    answers: tuple[str, ...]  # the 10 raw human answers, in answer_id order


@dataclass(frozen=True)
class VQAExample:
    """A question with its annotation (``None`` on test splits)."""

    question: VQAQuestion
    annotation: VQAAnnotation | None

    @property
    def question_id(self) -> int:
        return self.question.question_id

    @property
    def image_id(self) -> int:
        return self.question.image_id


def read_vqa_questions(path: str | os.PathLike) -> list[VQAQuestion]:
    """All questions of one questions file, in file order."""
    path = Path(path)
    data = load_json(path)
    out: list[VQAQuestion] = []
    seen: set[int] = set()
    for i, q in enumerate(require_list(data, "questions", path)):
        rec = f"questions[{i}]"
        qid = require(q, "question_id", int, path, rec)
        rec = f"questions[{i}] (question_id {qid})"
        if qid in seen:
            raise DataFormatError(path, rec, "question_id", "duplicate question_id")
        seen.add(qid)
        text = require(q, "question", str, path, rec)
        if not text.strip():
            raise DataFormatError(path, rec, "question", "empty question")
        out.append(VQAQuestion(question_id=qid, image_id=require(q, "image_id", int, path, rec),
                               question=text))
    return out


def read_vqa_annotations(path: str | os.PathLike) -> list[VQAAnnotation]:
    """All annotations of one annotations file, each checked to have 10 answers."""
    path = Path(path)
    data = load_json(path)
    out: list[VQAAnnotation] = []
    seen: set[int] = set()
    for i, a in enumerate(require_list(data, "annotations", path)):
        rec = f"annotations[{i}]"
        qid = require(a, "question_id", int, path, rec)
        rec = f"annotations[{i}] (question_id {qid})"
        if qid in seen:
            raise DataFormatError(path, rec, "question_id", "duplicate question_id")
        seen.add(qid)
        answer_type = require(a, "answer_type", str, path, rec)
        if answer_type not in ANSWER_TYPES:
            raise DataFormatError(path, rec, "answer_type",
                                  f"{answer_type!r} is not one of {ANSWER_TYPES}")
        answers = require(a, "answers", list, path, rec)
        if len(answers) != ANSWERS_PER_QUESTION:
            raise DataFormatError(path, rec, "answers",
                                  f"expected {ANSWERS_PER_QUESTION} answers, got {len(answers)}")
        texts = []
        for j, ans in enumerate(answers):
            texts.append(require(ans, "answer", str, path, f"{rec} answers[{j}]"))
        out.append(VQAAnnotation(
            question_id=qid,
            image_id=require(a, "image_id", int, path, rec),
            question_type=require(a, "question_type", str, path, rec),
            answer_type=answer_type,
            multiple_choice_answer=require(a, "multiple_choice_answer", str, path, rec),
            answers=tuple(texts),
        ))
    return out


def join_vqa(questions: list[VQAQuestion], annotations: list[VQAAnnotation] | None,
             annotations_path: str | os.PathLike = "<annotations>") -> list[VQAExample]:
    """Pair each question with its annotation by ``question_id``, in question order.

    ``annotations=None`` (test splits) gives examples without annotations. Otherwise every
    question must have exactly one annotation with the same image id, and vice versa.
    """
    if annotations is None:
        return [VQAExample(q, None) for q in questions]
    by_qid = {a.question_id: a for a in annotations}
    out = []
    for q in questions:
        ann = by_qid.pop(q.question_id, None)
        rec = f"question_id {q.question_id}"
        if ann is None:
            raise DataFormatError(annotations_path, rec, "question_id",
                                  "question has no annotation; are the questions and annotations "
                                  "files from the same split?")
        if ann.image_id != q.image_id:
            raise DataFormatError(annotations_path, rec, "image_id",
                                  f"annotation says image {ann.image_id}, question says "
                                  f"{q.image_id}")
        out.append(VQAExample(q, ann))
    if by_qid:
        qid = next(iter(by_qid))
        raise DataFormatError(annotations_path, f"question_id {qid}", "question_id",
                              f"{len(by_qid)} annotations have no question in the questions file")
    return out


def read_vqa(questions_path: str | os.PathLike,
             annotations_path: str | os.PathLike | None = None) -> list[VQAExample]:
    """Read and join one split (``annotations_path=None`` for test splits)."""
    questions = read_vqa_questions(questions_path)
    if annotations_path is None:
        return join_vqa(questions, None)
    return join_vqa(questions, read_vqa_annotations(annotations_path), annotations_path)

"""Constant predictions: a score that says nothing about the model's skill.

A model that emits one caption for every image, or answers every Number question with the same
answer, still gets a number (BLEU of that caption, the share of questions whose answer it
happens to be), and a difference of two such numbers is a "gain" of exactly zero with an
interval of zero width. Both look like results. The report flags them: this module reads the
scored predictions (the captions or answers JSON the metrics came from) and says, per metric,
what is constant.

Captioning: one distinct caption over all images flags every metric of the run. VQA: one
distinct answer over the questions of an answer type flags that type's column (``number``,
``yes/no``, ``other``); one answer over every question flags ``overall`` too.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any


def _quoted(text: str) -> str:
    return "the empty caption" if not text.strip() else repr(text[:60])


def caption_degeneracy(predictions: Any, path: str | os.PathLike) -> dict[str, str]:
    """``{"*": what}`` when every image got the same caption, else ``{}``. ``predictions`` is a
    COCO results list ``[{"image_id", "caption"}]``."""
    if not isinstance(predictions, Sequence) or isinstance(predictions, str):
        raise ValueError(f"{path}: expected a list of {{'image_id', 'caption'}} (COCO results)")
    captions = Counter(str(p.get("caption", "")) for p in predictions if isinstance(p, Mapping))
    if len(predictions) > 1 and len(captions) == 1:
        (caption, n), = captions.items()
        return {"*": f"constant predictions: {_quoted(caption)} for all {n} images ({path})"}
    return {}


def vqa_degeneracy(predictions: Any, answer_types: Mapping[int, str] | None,
                   path: str | os.PathLike) -> dict[str, str]:
    """``{answer type or "overall": what}`` for every group of questions that all got the same
    answer. Answer types come from the VQA annotations (``None``: only ``overall`` is
    checked). ``predictions`` is the official results list ``[{"question_id", "answer"}]``."""
    if not isinstance(predictions, Sequence) or isinstance(predictions, str):
        raise ValueError(f"{path}: expected a list of {{'question_id', 'answer'}} (VQA results)")
    groups: dict[str, Counter[str]] = {}
    for p in predictions:
        if not isinstance(p, Mapping):
            continue
        answer = str(p.get("answer", ""))
        groups.setdefault("overall", Counter())[answer] += 1
        kind = (answer_types or {}).get(int(p.get("question_id", -1)))
        if kind is not None:
            groups.setdefault(kind, Counter())[answer] += 1
    out = {}
    for group, answers in groups.items():
        n = sum(answers.values())
        if n > 1 and len(answers) == 1:
            answer = next(iter(answers))
            scope = "questions" if group == "overall" else f"{group} questions"
            out[group] = f"constant predictions: {answer!r} for all {n} {scope} ({path})"
    if "overall" in out:  # every column of the run is the same answer
        out.update({k: out["overall"] for k in groups})
    return out

"""The result files the VQA evaluation server takes for test-dev and test-std.

The paper's Table 3 reports test-dev and test-std accuracy, which only the evaluation server
(EvalAI) can compute: its answers are not public. A model trained on train + val answers every
question of ``v2_OpenEnded_mscoco_test2015_questions.json`` once (:func:`mia.vqa.predict.
answer_split` on the test store); this module splits those answers into the two uploads:

* ``test-dev``: the questions of ``v2_OpenEnded_mscoco_test-dev2015_questions.json`` (a subset of
  test2015), each answered exactly once;
* ``test-std``: every question of ``v2_OpenEnded_mscoco_test2015_questions.json`` (the server's
  test-standard phase scores the test-std part of the whole test2015 set).

Each file is ``[{"question_id": int, "answer": str}]`` in the questions file's order, validated
by :func:`mia.evaluation.vqa.write_test_server_results`: a question without an answer, a question
answered twice, or an answer to a question of neither file is refused before anything is
written, so an upload never fails (or scores lower) for a file problem.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mia.evaluation.vqa import (
    VQAEvalError,
    load_question_ids,
    load_results,
    write_test_server_results,
)

#: Server split -> the VQA v2 questions file it answers (under ``{data.root}/vqa/``).
SERVER_QUESTION_FILES = {
    "test-dev": "v2_OpenEnded_mscoco_test-dev2015_questions.json",
    "test-std": "v2_OpenEnded_mscoco_test2015_questions.json",
}


def write_server_files(answers: str | os.PathLike | Sequence[Mapping[str, Any]],
                       questions: Mapping[str, str | os.PathLike],
                       outputs: Mapping[str, str | os.PathLike]) -> dict[str, Path]:
    """Write one server file per split of ``questions`` (``{"test-dev": path, ...}``) to
    ``outputs[split]``, from ``answers`` (a results file or list covering all of them)."""
    if set(questions) != set(outputs):
        raise ValueError(f"questions for {sorted(questions)} but outputs for {sorted(outputs)}")
    by_id, source = load_results(answers)  # refuses a question answered twice
    ids = {split: load_question_ids(path) for split, path in questions.items()}
    known = {q for qids in ids.values() for q in qids}
    extra = [q for q in by_id if q not in known]
    if extra:
        files = ", ".join(str(p) for p in questions.values())
        raise VQAEvalError(f"{source}: question {extra[0]} is in none of {files} ({len(extra)} "
                           "such answers); answer the test store built from these questions "
                           "files")
    for split, path in questions.items():
        missing = [q for q in ids[split] if q not in by_id]
        if missing:
            raise VQAEvalError(f"{source}: no answer for question {missing[0]} of {path} "
                               f"({len(missing)} of {len(ids[split])} {split} questions "
                               "missing); every question needs exactly one answer")
    return {split: write_test_server_results({q: by_id[q] for q in ids[split]}, path,
                                             outputs[split])
            for split, path in questions.items()}

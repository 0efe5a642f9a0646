"""Answers of a trained VQA model, in the official results format.

``answer_split(model.pt, data, "val", out)`` writes ``[{"question_id": int, "answer": str}]``,
one entry per question of the split in store order, the file ``mia evaluate vqa`` scores and the
evaluation server takes (:mod:`mia.vqa.server` makes the test-dev / test-std files from it). An
answer is the argmax over the answer vocabulary of ``vqa.h5``: the training-normalised strings
("2", "yes", "red") both references output.

A checkpoint (``best.pt``/``model.pt`` of :mod:`mia.vqa.train`) carries the model config and
the vocabularies it was trained with; answering a store with other vocabularies is refused,
since the answer ids (and question word ids) would silently mean other words.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from mia.io import write_json
from mia.progress import Progress
from mia.runtime import move_batch, resolve_device
from mia.training.checkpoint import CheckpointError, load_checkpoint
from mia.vqa.config import VQAModelConfig
from mia.vqa.models import VQAModel, build_vqa_model

log = logging.getLogger(__name__)






@dataclass(frozen=True)
class Predictions:
    """Per question of a split, in store order: ``question_ids`` (Q,), ``answers`` (Q,) ids into
    the answer vocabulary, ``soft_scores`` (Q,) the store's soft target of that answer (0 on
    test splits, which have no answers)."""

    question_ids: np.ndarray
    answers: np.ndarray
    soft_scores: np.ndarray


@torch.no_grad()
def predict(model: nn.Module, data: Any, split: str, batch_size: int,
            should_stop: Callable[[], bool] | None = None) -> Predictions | None:
    """The argmax answer of every question of ``split`` (the model is put in eval mode).

    Returns None when ``should_stop()`` becomes true between batches (a stop signal during
    validation)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    qids, answers, scores = [], [], []
    rows = getattr(data, "split_rows", None)
    total = len(rows(split)) if callable(rows) else None
    try:
        with Progress(f"answering {split}", total, unit="questions", logger=log) as progress:
            for batch in data.eval_batches(split, batch_size):
                if should_stop is not None and should_stop():
                    return None
                logits = model(move_batch(batch, device))  # (B, n_answers)
                best = logits.argmax(dim=1).cpu()  # (B,)
                qids.append(batch["question_ids"].numpy())
                answers.append(best.numpy())
                scores.append(batch["target"].gather(1, best[:, None]).squeeze(1).numpy())
                progress.update(len(best))
    finally:
        model.train(was_training)
    if not qids:
        raise ValueError(f"split {split!r} of {getattr(data, 'path', 'the VQA store')} has no "
                         "questions")
    return Predictions(np.concatenate(qids), np.concatenate(answers), np.concatenate(scores))


def results_list(preds: Predictions, answer_vocab: Sequence[str]) -> list[dict[str, Any]]:
    """The official results format ``[{"question_id": int, "answer": str}]``."""
    return [{"question_id": int(q), "answer": answer_vocab[int(a)]}
            for q, a in zip(preds.question_ids, preds.answers, strict=True)]


def load_vqa_model(path: str | os.PathLike, device: str | torch.device = "auto"
                   ) -> tuple[VQAModel, dict[str, Any]]:
    """The model of a VQA checkpoint (eval mode) and its metadata (config, vocabularies)."""
    ck = load_checkpoint(path)
    missing = [k for k in ("model", "vqa_model", "question_vocab", "answer_vocab") if k not in ck]
    if missing:
        raise CheckpointError(f"{path}: not a VQA checkpoint of mia.vqa.train (no {missing}); "
                              "pass the model.pt of a train_vqa run")
    cfg = VQAModelConfig.from_dict(ck["vqa_model"], f"{path}: vqa_model")
    concepts = ck.get("concept_words")
    model = build_vqa_model(cfg, len(ck["question_vocab"]), len(ck["answer_vocab"]),
                            len(concepts) if concepts else None)
    model.load_state_dict(ck["model"])
    model.to(resolve_device(device)).eval()
    return model, ck


def check_vocabularies(meta: Mapping[str, Any], data: Any, where: str) -> None:
    """The data must encode questions, answers and concepts as the model was trained to read."""
    pairs = [("question_vocab", data.question_vocab), ("answer_vocab", data.answer_vocab)]
    if meta.get("concept_words"):
        if data.concept_words is None:
            raise ValueError(f"{where}: the model reads concepts (a MIA variant): build VQAData "
                             "with the concept store (concepts_h5=...)")
        pairs.append(("concept_words", data.concept_words))
    for name, words in pairs:
        if list(meta[name]) != list(words):
            raise ValueError(
                f"{where}: the model was trained with another {name} ({len(meta[name])} "
                f"entries) than {getattr(data, 'path', 'the data')} has ({len(words)}); answer "
                "stores built from the same vqa.h5 vocabularies (build_vqa_test_store copies them)")


def answer_split(model_path: str | os.PathLike, data: Any, split: str,
                 out_path: str | os.PathLike | None = None, batch_size: int = 512,
                 device: str | torch.device = "auto") -> list[dict[str, Any]]:
    """Answer every question of ``split`` of ``data`` (a ``VQAData``) with the model saved at
    ``model_path``; write the results list to ``out_path`` when given, and return it."""
    model, meta = load_vqa_model(model_path, device)
    check_vocabularies(meta, data, str(model_path))
    preds = predict(model, data, split, batch_size)
    assert preds is not None  # no should_stop: never interrupted
    results = results_list(preds, meta["answer_vocab"])
    if out_path is not None:
        write_json(out_path, results, indent=None)
        log.info("%s: %d answers of split %s -> %s", model_path, len(results), split, out_path)
    return results

"""Our results, read from the files of :class:`~mia.report.inputs.ReportInputs`, on the paper's
scale (coco-caption scores x100, VQA accuracies in %), per run and per seed.

A metric that a metrics file holds as ``null`` keeps the reason from its ``skipped`` entry (SPICE
without the CoreNLP jars), so a table can say "n/a (reason)" instead of a bare dash. Per-item
scores (captioning ``--per-image`` files, VQA ``perQuestion``) are kept as arrays sorted by item id,
ready for the paired bootstrap of :mod:`mia.report.stats`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mia.report.inputs import ReportInputs, SeedFiles

#: Our metrics files -> the paper's scale.
SCALE = {"captioning": 100.0, "vqa": 1.0}
#: VQA answer types as ``perAnswerType`` names them.
ANSWER_TYPES = ("yes/no", "number", "other")

History = list[dict[str, Any]]


def read_json(path: str | os.PathLike, what: str, run: str) -> Any:
    """A JSON file, with errors naming the file, what it is, and the run that needs it."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: {what} of run {run} is missing") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: {what} of run {run} is not valid JSON ({err})") from err


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def flatten_metrics(raw: Mapping[str, Any]) -> dict[str, float]:
    """``{metric: value}`` from a metrics JSON.

    Top-level numbers win; numbers in nested mappings (``{"perAnswerType": {"number": ..}}``) are
    added under their own key when not already there. ``perQuestion`` and ``perQuestionType``
    (thousands of entries, never a table column) are skipped.
    """
    flat: dict[str, float] = {}
    nested: list[Mapping[str, Any]] = []
    for key, value in raw.items():
        if key in ("perQuestion", "perQuestionType", "perQuestionAnswerType", "skipped"):
            continue
        number = _number(value)
        if number is not None:
            flat[key] = number
        elif isinstance(value, Mapping):
            nested.append(value)
    for sub in nested:
        for key, value in flatten_metrics(sub).items():
            flat.setdefault(key, value)
    return flat


def read_history(path: str | os.PathLike, run: str) -> tuple[History, str | None]:
    """Rows of a ``history.json`` (one per epoch) and the device it recorded, if any.

    Accepts a list of rows (each may carry ``device``) or ``{"device": .., "epochs": [rows]}``
    (also ``"history"`` or ``"rows"`` for the list).
    """
    data = read_json(path, "training history", run)
    device = None
    if isinstance(data, Mapping):
        device = data.get("device")
        rows = next((data[k] for k in ("epochs", "history", "rows") if k in data), None)
        if rows is None:
            raise ValueError(f"{path}: training history of run {run} has no 'epochs' list")
        data = rows
    if not isinstance(data, list) or not all(isinstance(r, Mapping) for r in data):
        raise ValueError(f"{path}: training history of run {run} must be a list of epoch rows")
    for row in data:
        if device is None and row.get("device"):
            device = row["device"]
    return [dict(r) for r in data], (str(device) if device else None)


@dataclass(frozen=True)
class Value:
    """One number of a table across seeds: mean, sample sd (``None`` for one seed), how many
    seeds, and why it is missing when it is."""

    mean: float | None
    std: float | None = None
    n: int = 0
    reason: str | None = None

    @classmethod
    def of(cls, values: Sequence[float | None], reasons: Sequence[str | None] = ()) -> Value:
        present = [v for v in values if v is not None]
        if not present:
            reason = next((r for r in reasons if r), None)
            return cls(None, None, 0, reason)
        std = float(np.std(present, ddof=1)) if len(present) > 1 else None
        return cls(float(np.mean(present)), std, len(present))


@dataclass
class SeedResult:
    """One seed of one run, on the paper's scale."""

    seed: int
    metrics: dict[str, float]
    skipped: dict[str, str]
    per_item: dict[str, tuple[np.ndarray, np.ndarray]]  # metric -> (item ids, scores), by id
    histories: dict[str, History] = field(default_factory=dict)
    device: str | None = None
    server: dict[str, float] = field(default_factory=dict)  # split -> overall accuracy


@dataclass
class RunResult:
    run: str
    seeds: dict[int, SeedResult]

    @property
    def task(self) -> str:
        return self.run.split("/")[0]

    def value(self, metric: str) -> Value:
        """Mean +- sd over seeds of ``metric`` (case-insensitive), or why it is missing."""
        values, reasons = [], []
        for result in self.seeds.values():
            values.append(_lookup(result.metrics, metric))
            reasons.append(_lookup(result.skipped, metric))
        return Value.of(values, reasons)

    def server_value(self, split: str) -> Value:
        values = [r.server.get(split) for r in self.seeds.values()]
        if all(v is None for v in values):
            return Value(None, reason="no server result")
        return Value.of(values)

    def per_item(self, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
        """``(item ids, scores (seeds, items))`` when every seed has per-item ``metric`` scores
        for the same items; ``None`` when any seed lacks them."""
        pairs = [r.per_item.get(metric) for r in self.seeds.values()]
        if not pairs or any(p is None for p in pairs):
            return None
        ids = pairs[0][0]
        for (other, _), seed in zip(pairs[1:], list(self.seeds)[1:], strict=True):
            if not np.array_equal(other, ids):
                raise ValueError(f"run {self.run}: seed {seed} has per-item {metric} scores for "
                                 f"other items than seed {next(iter(self.seeds))}; evaluate "
                                 "every seed on the same split")
        return ids, np.stack([p[1] for p in pairs])


def _lookup(d: Mapping[str, Any], name: str) -> Any:
    if name in d:
        return d[name]
    lowered = {k.lower(): v for k, v in d.items()}
    return lowered.get(name.lower())


def _caption_per_item(path: Path, run: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    data = read_json(path, "per-image scores", run)
    if not isinstance(data, Mapping) or not data:
        raise ValueError(f"{path}: per-image scores of run {run} must be a non-empty mapping "
                         "{image_id: {metric: score}}")
    ids = np.array(sorted(int(k) for k in data), dtype=np.int64)
    rows = {int(k): v for k, v in data.items()}
    metrics = set.intersection(*(set(v) for v in rows.values()))
    out = {}
    for metric in sorted(metrics):
        values = np.array([float(rows[i][metric]) for i in ids]) * SCALE["captioning"]
        out[metric] = (ids, values)
    return out


def _vqa_per_item(raw: Mapping[str, Any], answer_types: Mapping[int, str] | None, path: Path,
                  run: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    per_question = raw.get("perQuestion")
    if not isinstance(per_question, Mapping) or not per_question:
        return {}
    ids = np.array(sorted(int(k) for k in per_question), dtype=np.int64)
    scores = {int(k): float(v) for k, v in per_question.items()}
    values = np.array([scores[i] for i in ids])
    out = {"overall": (ids, values)}
    types = raw.get("perQuestionAnswerType")
    if isinstance(types, Mapping):
        answer_types = {int(k): str(v) for k, v in types.items()}
    if answer_types is not None:
        missing = [int(i) for i in ids if int(i) not in answer_types]
        if missing:
            raise ValueError(f"{path}: question {missing[0]} of run {run} has no answer type in "
                             f"the VQA annotations given to the report ({len(missing)} missing); "
                             "pass the annotations of the split the run was evaluated on")
        kinds = np.array([answer_types[int(i)] for i in ids])
        for kind in ANSWER_TYPES:
            keep = kinds == kind
            if keep.any():
                out[kind] = (ids[keep], values[keep])
    return out


def load_answer_types(path: str | os.PathLike) -> dict[int, str]:
    """``{question_id: answer_type}`` of a VQA v2 annotations file."""
    data = read_json(path, "VQA annotations", "(answer types)")
    try:
        return {int(a["question_id"]): str(a["answer_type"]) for a in data["annotations"]}
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a VQA v2 annotations file (expected annotations[] with "
                         f"question_id and answer_type): {err}") from err


def read_server_result(path: str | os.PathLike, split: str, run: str) -> float:
    """The overall accuracy of a VQA evaluation-server result JSON.

    The server's files nest the accuracies under the split (``{"test-dev": {"overall": ..}}``,
    sometimes inside a one-element list); a flat ``{"overall": ..}`` is read too.
    """
    data = read_json(path, f"{split} server result", run)
    if isinstance(data, list):
        data = {k: v for item in data if isinstance(item, Mapping) for k, v in item.items()}
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: {split} server result of run {run} is not a JSON object")
    aliases = {split, split.replace("-", "_"), split.replace("std", "standard"),
               split.replace("-", "_").replace("std", "standard")}
    for key in aliases:
        if isinstance(data.get(key), Mapping):
            data = data[key]
            break
    overall = _number(_lookup(data, "overall"))
    if overall is None:
        raise ValueError(f"{path}: {split} server result of run {run} has no 'overall' "
                         "accuracy; save the result file the evaluation server shows")
    return overall


def _load_seed(run: str, seed: int, files: SeedFiles, answer_types: Mapping[int, str] | None,
               server: Mapping[str, Path]) -> SeedResult:
    task = run.split("/")[0]
    raw = read_json(files.metrics, "metrics", run)
    if not isinstance(raw, Mapping):
        raise ValueError(f"{files.metrics}: metrics of run {run} must be a JSON object")
    scale = SCALE[task]
    metrics = {k: v * scale for k, v in flatten_metrics(raw).items() if k != "num_images"}
    skipped = {str(k): str(v) for k, v in (raw.get("skipped") or {}).items()}
    for key, value in raw.items():  # null metrics without a reason still say why
        if value is None and key not in skipped:
            skipped[key] = "not computed"
    if task == "captioning":
        per_item = _caption_per_item(files.per_item, run) if files.per_item else {}
    else:
        per_item = _vqa_per_item(raw, answer_types, files.metrics, run)
    histories, device = {}, None
    for stage, path in files.histories.items():
        histories[stage], stage_device = read_history(path, run)
        device = device or stage_device
    server_values = {split: read_server_result(p, split, run) for split, p in server.items()}
    return SeedResult(seed, metrics, skipped, per_item, histories, device, server_values)


def load_results(inputs: ReportInputs) -> dict[str, RunResult]:
    """Every run of ``inputs``, each seed's files read and checked."""
    answer_types = (load_answer_types(inputs.vqa_annotations)
                    if inputs.vqa_annotations is not None else None)
    out = {}
    for run, seeds in inputs.runs.items():
        server = inputs.server.get(run, {})
        out[run] = RunResult(run, {
            seed: _load_seed(run, seed, files, answer_types, server.get(seed, {}))
            for seed, files in sorted(seeds.items())})
    return out

"""Our results, read from the files of :class:`~mia.report.inputs.ReportInputs`, on the paper's
scale (coco-caption scores x100, VQA accuracies in %), per run and per seed.

A metric that a metrics file holds as ``null`` keeps the reason from its ``skipped`` entry (SPICE
without the CoreNLP jars), so a table can say "n/a (reason)" instead of a bare dash. A metric that
is not a finite number (NaN, Infinity, a string) is never silently dropped: the seed is left out
of that metric's cell AND its interval, and both say which seed and why. Per-item scores
(captioning ``--per-image`` files, VQA ``perQuestion``) are kept as arrays sorted by item id,
ready for the paired bootstrap of :mod:`mia.report.stats`.

What a number cannot say by itself is read too: predictions that are constant (one caption for
every image, one answer for every Number question: :mod:`mia.report.degenerate`) and a
self-critical stage that kept its cross-entropy weights (:func:`read_stage_outcome`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mia.report.degenerate import caption_degeneracy, vqa_degeneracy
from mia.report.inputs import ReportInputs, SeedFiles

log = logging.getLogger(__name__)

#: Our metrics files -> the paper's scale.
SCALE = {"captioning": 100.0, "vqa": 1.0}
#: VQA answer types as ``perAnswerType`` names them.
ANSWER_TYPES = ("yes/no", "number", "other")
#: Per-epoch history values that are CIDEr-D on coco-caption's 0..1 scale (validation score, and
#: SCST's reward, baseline and sample scores): shown x100 like every other caption metric.
CIDER_HISTORY_KEYS = ("val_cider", "train_reward", "train_baseline", "train_sample_cider",
                      "train_greedy_cider")

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


def not_a_number(value: Any) -> str | None:
    """Why ``value`` cannot be a metric (``"NaN"``, ``"Infinity"``, ``"a string 'x'"``), or None
    for a finite number and for ``null`` (a metric not computed, said by ``skipped``)."""
    if value is None or isinstance(value, Mapping | list):
        return None
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return None
    if isinstance(value, str):
        return f"a string ({value[:20]!r})"
    return f"a {type(value).__name__}"


def invalid_metrics(raw: Mapping[str, Any]) -> dict[str, str]:
    """``{metric: why}`` for every metric of a metrics JSON that is not a finite number (top
    level and one level down, as :func:`flatten_metrics` reads them)."""
    out: dict[str, str] = {}
    for key, value in raw.items():
        if key in ("perQuestion", "perQuestionType", "perQuestionAnswerType", "skipped",
                    "num_images"):
            continue
        if isinstance(value, Mapping):
            for sub, inner in value.items():
                why = not_a_number(inner)
                if why and sub not in raw:
                    out.setdefault(str(sub), why)
        else:
            why = not_a_number(value)
            if why:
                out[str(key)] = why
    return out


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
    seeds, why it is missing when it is, and the seeds left out of it (with the reason)."""

    mean: float | None
    std: float | None = None
    n: int = 0
    reason: str | None = None
    dropped: tuple[tuple[int, str], ...] = ()  # (seed, why) of seeds left out
    flags: tuple[str, ...] = ()  # what the number cannot say by itself (constant predictions)

    @classmethod
    def of(cls, values: Sequence[float | None], reasons: Sequence[str | None] = ()) -> Value:
        present = [v for v in values if v is not None]
        if not present:
            reason = next((r for r in reasons if r), None)
            return cls(None, None, 0, reason)
        std = float(np.std(present, ddof=1)) if len(present) > 1 else None
        return cls(float(np.mean(present)), std, len(present))

    @property
    def seeds_total(self) -> int:
        return self.n + len(self.dropped)


@dataclass(frozen=True)
class StageOutcome:
    """What a training stage selected: ``best_epoch`` 0 means the weights it started from (the
    XE model, for SCST) won, i.e. no epoch of the stage improved the validation score."""

    stage: str
    best_epoch: int
    start_score: float | None  # the starting weights' validation score, on the paper's scale
    best_trained: float | None  # the best validation score of the stage's own epochs
    source: Path

    @property
    def kept_start(self) -> bool:
        return self.best_epoch == 0

    def note(self) -> str:
        """The sentence the report puts beside the numbers of such a run."""
        trained = ("" if self.best_trained is None else
                   f"; its best {self.stage.upper()} epoch scored {self.best_trained:.2f}")
        start = "" if self.start_score is None else f" {self.start_score:.2f}"
        return (f"its {self.stage.upper()} stage kept the XE weights: no {self.stage.upper()} "
                f"epoch beat the XE model's val CIDEr-D{start}{trained} ({self.source}), so "
                "these are cross-entropy numbers (self-critical.pytorch keeps the better of the "
                "two the same way)")


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
    invalid: dict[str, str] = field(default_factory=dict)  # metric -> why it is no number
    degenerate: dict[str, str] = field(default_factory=dict)  # metric ("*": all) -> what
    stages: dict[str, StageOutcome] = field(default_factory=dict)
    files: SeedFiles | None = None


@dataclass
class RunResult:
    run: str
    seeds: dict[int, SeedResult]

    @property
    def task(self) -> str:
        return self.run.split("/")[0]

    def _seed_values(self, metric: str) -> tuple[list[int], list[float | None],
                                                  list[str | None], list[tuple[int, str]]]:
        """Seeds that have ``metric`` as a number, their values, the reasons of the others, and
        the seeds left out while others have a number (each with why)."""
        kept, values, reasons, dropped = [], [], [], []
        for seed, result in self.seeds.items():
            bad = _lookup(result.invalid, metric)
            value = _lookup(result.metrics, metric)
            if bad:
                where = f" in {result.files.metrics}" if result.files else ""
                dropped.append((seed, f"{metric} is {bad}{where}"))
            elif value is None:
                reasons.append(_lookup(result.skipped, metric))
            else:
                kept.append(seed)
                values.append(value)
        if kept:  # a seed without the metric while others have it is left out, and said
            for seed, result in self.seeds.items():
                if seed not in kept and all(s != seed for s, _ in dropped):
                    why = _lookup(result.skipped, metric) or "missing"
                    where = f" in {result.files.metrics}" if result.files else ""
                    dropped.append((seed, f"{metric} {why}{where}"))
        return kept, values, reasons, sorted(dropped)

    def valid_seeds(self, metric: str) -> list[int]:
        """The seeds whose ``metric`` is a number: the seeds of its cell and of its interval."""
        return self._seed_values(metric)[0]

    def value(self, metric: str) -> Value:
        """Mean +- sd over seeds of ``metric`` (case-insensitive), or why it is missing; seeds
        whose value is not a number are left out and named."""
        _, values, reasons, dropped = self._seed_values(metric)
        value = Value.of(values, reasons)
        if not values and dropped:
            value = replace(value, reason="; ".join(f"seed {s}: {why}" for s, why in dropped))
        return replace(value, dropped=tuple(dropped), flags=tuple(self.degenerate(metric)))

    def degenerate(self, metric: str) -> list[str]:
        """What is constant about the predictions behind ``metric`` (empty when nothing)."""
        out = []
        for seed, result in self.seeds.items():
            what = _lookup(result.degenerate, metric) or result.degenerate.get("*")
            if what:
                out.append(what if len(self.seeds) == 1 else f"seed {seed}: {what}")
        return out

    def stage_outcome(self, stage: str) -> list[StageOutcome]:
        return [r.stages[stage] for r in self.seeds.values() if stage in r.stages]

    def server_value(self, split: str) -> Value:
        values = [r.server.get(split) for r in self.seeds.values()]
        if all(v is None for v in values):
            return Value(None, reason="no server result")
        return Value.of(values)

    def per_item(self, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
        """``(item ids, scores (seeds, items))`` of the seeds whose ``metric`` is a number (the
        seeds of the table's cell), when each has per-item ``metric`` scores for the same items;
        ``None`` when any lacks them. Raises ``ValueError`` naming the run, seed and file when
        scores cover other items or are not finite."""
        seeds = self.valid_seeds(metric) or list(self.seeds)
        pairs = [self.seeds[s].per_item.get(metric) for s in seeds]
        if not pairs or any(p is None for p in pairs):
            return None
        ids = pairs[0][0]
        for (other, _), seed in zip(pairs[1:], seeds[1:], strict=True):
            if not np.array_equal(other, ids):
                raise ValueError(f"run {self.run}: seed {seed} has per-item {metric} scores for "
                                 f"other items than seed {seeds[0]}; evaluate "
                                 "every seed on the same split")
        for (item_ids, scores), seed in zip(pairs, seeds, strict=True):
            bad = ~np.isfinite(scores)
            if bad.any():
                files = self.seeds[seed].files
                where = files.per_item or files.metrics if files else "its per-item file"
                raise ValueError(f"run {self.run} seed {seed}: per-item {metric} is not finite "
                                 f"for {int(bad.sum())} of {len(scores)} items (first: item "
                                 f"{int(item_ids[bad][0])}) in {where}; re-run its evaluation")
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
        values = np.array([_score(rows[i][metric]) for i in ids]) * SCALE["captioning"]
        out[metric] = (ids, values)
    return out


def _score(value: Any) -> float:
    """A per-item score; anything that is not a number becomes NaN, which
    :meth:`RunResult.per_item` names with its run, seed and file."""
    return float(value) if not not_a_number(value) and value is not None else math.nan


def _vqa_per_item(raw: Mapping[str, Any], answer_types: Mapping[int, str] | None, path: Path,
                  run: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    per_question = raw.get("perQuestion")
    if not isinstance(per_question, Mapping) or not per_question:
        return {}
    ids = np.array(sorted(int(k) for k in per_question), dtype=np.int64)
    scores = {int(k): _score(v) for k, v in per_question.items()}
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


def read_stage_outcome(path: str | os.PathLike, stage: str, history: History
                       ) -> StageOutcome | None:
    """Which epoch a stage's published ``model.pt`` holds (``epoch`` 0: the starting weights,
    i.e. the XE model for SCST), read without loading the weights (``mmap``); ``None`` when the
    file says nothing about it. ``history`` is the stage's rows on the paper's scale."""
    import torch

    try:
        try:  # mmap: the weights stay on disk, only the small entries are read
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # not the zip format mmap needs: read it whole
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as err:
        log.warning("%s: cannot read which epoch the %s stage selected (%s); the report says "
                    "nothing about it", path, stage, err)
        return None
    epoch = checkpoint.get("epoch") if isinstance(checkpoint, Mapping) else None
    if not isinstance(epoch, int):
        return None
    start = None
    if epoch == 0 and isinstance(checkpoint.get("val_cider"), int | float):
        start = float(checkpoint["val_cider"]) * SCALE["captioning"]
    trained = [float(r["val_cider"]) for r in history if r.get("val_cider") is not None]
    return StageOutcome(stage, epoch, start, max(trained) if trained else None, Path(path))


def _scaled_history(rows: History, task: str) -> History:
    """History rows on the paper's scale: CIDEr-D values x100 for captioning."""
    if task != "captioning":
        return rows
    return [{k: (v * SCALE["captioning"] if k in CIDER_HISTORY_KEYS and _number(v) is not None
                 else v) for k, v in row.items()} for row in rows]


def _load_seed(run: str, seed: int, files: SeedFiles, answer_types: Mapping[int, str] | None,
               server: Mapping[str, Path]) -> SeedResult:
    task = run.split("/")[0]
    raw = read_json(files.metrics, "metrics", run)
    if not isinstance(raw, Mapping):
        raise ValueError(f"{files.metrics}: metrics of run {run} must be a JSON object")
    scale = SCALE[task]
    metrics = {k: v * scale for k, v in flatten_metrics(raw).items() if k != "num_images"}
    invalid = invalid_metrics(raw)
    for metric, why in invalid.items():
        log.warning("%s: run %s seed %d: %s is %s; the seed is left out of that metric's cell "
                    "and interval", files.metrics, run, seed, metric, why)
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
        rows, stage_device = read_history(path, run)
        histories[stage] = _scaled_history(rows, task)
        device = device or stage_device
    stages = {}
    for stage, path in files.models.items():
        if stage != "xe" and Path(path).exists():  # a stage that starts from trained weights
            outcome = read_stage_outcome(path, stage, histories.get(stage, []))
            if outcome is not None:
                stages[stage] = outcome
    degenerate: dict[str, str] = {}
    if files.predictions is not None:
        predictions = read_json(files.predictions, "predictions", run)
        if task == "captioning":
            degenerate = caption_degeneracy(predictions, files.predictions)
        else:
            degenerate = vqa_degeneracy(predictions, answer_types, files.predictions)
    server_values = {split: read_server_result(p, split, run) for split, p in server.items()}
    return SeedResult(seed, metrics, skipped, per_item, histories, device, server_values,
                      invalid, degenerate, stages, files)


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

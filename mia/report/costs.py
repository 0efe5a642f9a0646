"""What each run cost: wall time, CPU- and GPU-hours, peak memory, epochs, best epoch; and what
the whole pipeline cost, stage by stage (data, feature extraction, training, decoding,
evaluation), from every rule's benchmark file: at paper scale feature extraction and decoding are
a large share, so training alone understates a reproduction's bill.

Wall time, CPU time and peak resident memory (``max_rss``) come from the Snakemake benchmark TSV
of each training stage. The device comes from the run's ``history.json`` when training recorded
it; otherwise from the config (the task's ``train.device`` when it is not ``auto``, else the
rule's ``resources.gpu``). A stage that ran on a GPU counts its wall hours (times the GPUs its
rule requests) as GPU-hours; CPU-hours are the benchmark's CPU time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mia.report.benchmarks import read_benchmark
from mia.report.inputs import ReportInputs
from mia.report.results import History, RunResult

#: Per-epoch validation scores a history may hold, in order of preference.
VAL_KEYS = ("val_cider", "val_accuracy", "val_overall", "val_score")
#: The rule that trains each task (its ``resources`` entry).
TRAIN_RULES = {"captioning": "train_captioner", "vqa": "train_vqa"}


@dataclass(frozen=True)
class StageCost:
    run: str
    seed: int
    stage: str
    device: str
    gpu: bool
    wall_s: float
    cpu_hours: float | None
    gpu_hours: float
    max_rss_mb: float | None
    epochs: int
    best_epoch: int | None
    best_val: float | None
    val_key: str | None


@dataclass(frozen=True)
class CostTotals:
    jobs: int
    wall_s: float
    cpu_hours: float | None
    gpu_hours: float
    max_rss_mb: float | None
    devices: tuple[str, ...]


def is_gpu(device: str) -> bool:
    lowered = device.lower()
    return any(word in lowered for word in ("cuda", "gpu", "nvidia", "rocm", "mps"))


def best_epoch(history: History) -> tuple[int | None, float | None, str | None]:
    """(epoch, score, key) of the best validation score; Nones when the history has none."""
    for key in VAL_KEYS:
        scored = [r for r in history if r.get(key) is not None]
        if scored:
            best = max(scored, key=lambda r: float(r[key]))
            return int(best.get("epoch", history.index(best) + 1)), float(best[key]), key
    return None, None, None


def _config_device(config: Mapping[str, Any], task: str) -> tuple[str, int]:
    """(device words, GPUs requested) when training did not record its device."""
    rule = TRAIN_RULES.get(task, "")
    gpus = int((config.get("resources", {}).get(rule) or {}).get("gpu", 0) or 0)
    device = str(((config.get(task) or {}).get("train") or {}).get("device", "auto"))
    if device != "auto":
        return f"{device} (config)", gpus if is_gpu(device) else 0
    if gpus > 0:
        return f"GPU ({rule} requests gpu={gpus})", gpus
    return "CPU (no GPU requested)", 0


def stage_costs(inputs: ReportInputs, results: Mapping[str, RunResult],
                config: Mapping[str, Any]) -> list[StageCost]:
    """One row per run, seed and training stage that has a benchmark file."""
    out = []
    for run, seeds in inputs.runs.items():
        task = run.split("/")[0]
        for seed, files in sorted(seeds.items()):
            result = results[run].seeds[seed]
            for stage, path in files.benchmarks.items():
                bench = read_benchmark(path)
                history = result.histories.get(stage, [])
                if result.device:
                    device = result.device
                    gpus = max(1, int((config.get("resources", {}).get(
                        TRAIN_RULES.get(task, "")) or {}).get("gpu", 1) or 1))
                    gpus = gpus if is_gpu(device) else 0
                else:
                    device, gpus = _config_device(config, task)
                epoch, val, key = best_epoch(history)
                outcome = result.stages.get(stage)
                if outcome is not None and outcome.kept_start:  # epoch 0: the XE weights won
                    epoch, val = 0, outcome.start_score
                out.append(StageCost(
                    run=run, seed=seed, stage=stage or "train", device=device, gpu=gpus > 0,
                    wall_s=bench.wall_s,
                    cpu_hours=None if bench.cpu_time_s is None else bench.cpu_time_s / 3600,
                    gpu_hours=bench.wall_s / 3600 * gpus, max_rss_mb=bench.max_rss_mb,
                    epochs=len(history), best_epoch=epoch, best_val=val, val_key=key))
    return out


def totals(costs: Sequence[StageCost]) -> CostTotals:
    """Sums over every stage (peak memory: the largest)."""
    cpu = [c.cpu_hours for c in costs if c.cpu_hours is not None]
    rss = [c.max_rss_mb for c in costs if c.max_rss_mb is not None]
    return CostTotals(jobs=len(costs), wall_s=sum(c.wall_s for c in costs),
                      cpu_hours=sum(cpu) if cpu else None,
                      gpu_hours=sum(c.gpu_hours for c in costs),
                      max_rss_mb=max(rss) if rss else None,
                      devices=tuple(sorted({c.device for c in costs})))


#: Every rule of the workflow: (pipeline stage, its ``resources`` entry in the config). The
#: benchmark files live at ``results/<name>/benchmarks/<rule>[/...].tsv`` (``download/`` and
#: ``extract/`` are the archive rules; ``train_captioner/.../scst.tsv`` is the SCST rule).
RULE_STAGES: dict[str, tuple[str, str | None]] = {
    "generate_demo_world": ("data", "demo_world"),
    "generate_demo_test_set": ("data", "demo_world"),
    "download_archive": ("data", "download"),
    "extract_archive": ("data", "download"),
    "build_caption_store": ("data", "preprocess"),
    "build_vqa_store": ("data", "preprocess"),
    "build_vqa_test_store": ("data", "preprocess"),
    "cider_document_frequency": ("data", "preprocess"),
    "extract_grid_features": ("features", "grid_features"),
    "extract_test_grid_features": ("features", "grid_features"),
    "extract_region_features": ("features", "region_features"),
    "extract_test_region_features": ("features", "region_features"),
    "build_concept_store": ("features", "concepts"),
    "build_test_concept_store": ("features", "concepts"),
    "train_captioner": ("training", "train_captioner"),
    "train_captioner_scst": ("training", "train_captioner"),
    "train_vqa": ("training", "train_vqa"),
    "train_vqa_trainval": ("training", "train_vqa"),
    "decode_captions": ("decoding", "decode"),
    "answer_vqa": ("decoding", "decode"),
    "answer_vqa_server": ("decoding", "decode"),
    "evaluate_captions": ("evaluation", "evaluate"),
    "evaluate_vqa": ("evaluation", "evaluate"),
    "draw_figure5": ("figures", "report"),
}
#: The order the pipeline runs its stages in (the cost table's rows).
PIPELINE_STAGES = ("data", "features", "training", "decoding", "evaluation", "figures", "other")
#: Folder names under benchmarks/ that are not the rule's own name.
_FOLDER_RULES = {"download": "download_archive", "extract": "extract_archive"}


@dataclass(frozen=True)
class JobCost:
    """One job's benchmark: its rule and pipeline stage."""

    rule: str
    stage: str
    path: str
    wall_s: float
    cpu_hours: float | None
    gpu_hours: float  # wall hours x the GPUs its rule requests
    max_rss_mb: float | None


@dataclass(frozen=True)
class StageTotal:
    """Every job of one pipeline stage."""

    stage: str
    rules: tuple[str, ...]
    jobs: int
    wall_s: float
    cpu_hours: float | None
    gpu_hours: float
    max_rss_mb: float | None


def benchmark_rule(relative: str) -> str:
    """The rule that wrote a benchmark file, from its path under ``benchmarks/``."""
    parts = relative.replace("\\", "/").split("/")
    if len(parts) == 1:
        return parts[0].removesuffix(".tsv")
    rule = _FOLDER_RULES.get(parts[0], parts[0])
    if rule == "train_captioner" and parts[-1] == "scst.tsv":
        return "train_captioner_scst"
    return rule


def job_costs(benchmarks_dir: str | Path, config: Mapping[str, Any],
              exclude: Sequence[str] = ("render_report",)) -> list[JobCost]:
    """Every Snakemake benchmark file under ``benchmarks_dir`` (all rules' jobs that finished),
    each with its stage and GPU-hours (wall hours x ``resources.<entry>.gpu`` of the config)."""
    root = Path(benchmarks_dir)
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.rglob("*.tsv")):
        relative = path.relative_to(root).as_posix()
        rule = benchmark_rule(relative)
        if rule in exclude:
            continue
        stage, entry = RULE_STAGES.get(rule, ("other", None))
        bench = read_benchmark(path)
        gpus = int(((config.get("resources") or {}).get(entry or "") or {}).get("gpu", 0) or 0)
        out.append(JobCost(rule, stage, relative, bench.wall_s,
                           None if bench.cpu_time_s is None else bench.cpu_time_s / 3600,
                           bench.wall_s / 3600 * gpus, bench.max_rss_mb))
    return out


def stage_totals(jobs: Sequence[JobCost]) -> list[StageTotal]:
    """The jobs summed per pipeline stage, in pipeline order, then a row for all of them."""
    rows = []
    for stage in PIPELINE_STAGES:
        mine = [j for j in jobs if j.stage == stage]
        if mine:
            rows.append(_total(stage, mine))
    if jobs:
        rows.append(_total("all", list(jobs)))
    return rows


def _total(stage: str, jobs: Sequence[JobCost]) -> StageTotal:
    cpu = [j.cpu_hours for j in jobs if j.cpu_hours is not None]
    rss = [j.max_rss_mb for j in jobs if j.max_rss_mb is not None]
    return StageTotal(stage, tuple(dict.fromkeys(j.rule for j in jobs)), len(jobs),
                      sum(j.wall_s for j in jobs), sum(cpu) if cpu else None,
                      sum(j.gpu_hours for j in jobs), max(rss) if rss else None)

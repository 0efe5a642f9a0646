"""What each run cost: wall time, CPU- and GPU-hours, peak memory, epochs, best epoch.

Wall time, CPU time and peak resident memory (``max_rss``) come from the Snakemake benchmark TSV
of each training stage. The device comes from the run's ``history.json`` when training recorded
it; otherwise from the config (the task's ``train.device`` when it is not ``auto``, else the
rule's ``resources.gpu``). A stage that ran on a GPU counts its wall hours (times the GPUs its
rule requests) as GPU-hours; CPU-hours are the benchmark's CPU time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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

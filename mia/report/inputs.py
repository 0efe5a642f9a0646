"""What the report reads: the layout of files the workflow hands to :func:`render_report`.

The workflow (``rules/common.smk``) builds plain dicts; :meth:`ReportInputs.from_dict` turns them
into these typed records and refuses a misspelt key, so a wrong path never silently drops a run::

    run_files = {run_id: {seed: {"metrics": path,            # mia evaluate captions|vqa JSON
                                 "per_item": path | None,    # captions: --per-image JSON
                                 "histories": {stage: path}, # history.json per training stage
                                 "benchmarks": {stage: path},  # Snakemake benchmark TSVs
                                 "predictions": path | None,   # optional: captions/answers JSON
                                 "models": {stage: path}}}}    # optional: model.pt per stage
    server_files = {run_id: {seed: {"test-dev": path, "test-std": path}}}  # optional
    figure5 = {panel_label: [png, ...]}   # optional; a JSON with the same stem beside each PNG
    vqa_annotations = path | None         # optional; answer type of each question (Number CI)

``run_id`` is ``{task}/{baseline}/{variant}``, ``seed`` an int (YAML/JSON may give it as a
string), ``stage`` ``xe``/``scst`` for captioning and ``train`` for VQA. The single-seed layout
of earlier versions (``{run_id: {"metrics": ..., "histories": ..., "benchmarks": ...}}``) is still
read, under the seed the caller names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVER_SPLITS = ("test-dev", "test-std")


def _refuse_unknown(d: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(allowed)}")


def _paths(d: Any, where: str) -> dict[str, Path]:
    if d is None:
        return {}
    if not isinstance(d, Mapping):
        raise ValueError(f"{where}: expected a mapping stage -> path, got {type(d).__name__}")
    return {str(k): Path(v) for k, v in d.items()}


def _seed(value: Any, where: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: seed {value!r} is not an integer") from err


def _check_run_id(run: str, where: str) -> None:
    parts = str(run).split("/")
    if len(parts) != 3 or parts[0] not in ("captioning", "vqa") or not all(parts):
        raise ValueError(f"{where}: {run!r} is not a run id task/baseline/variant with task "
                         "captioning or vqa")


@dataclass(frozen=True)
class SeedFiles:
    """One training seed of one run: its metrics and what it cost."""

    metrics: Path
    per_item: Path | None = None
    histories: dict[str, Path] = field(default_factory=dict)
    benchmarks: dict[str, Path] = field(default_factory=dict)
    predictions: Path | None = None  # what was scored: flags constant predictions
    models: dict[str, Path] = field(default_factory=dict)  # which epoch each stage published

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> SeedFiles:
        if not isinstance(d, Mapping):
            raise ValueError(f"{where}: expected a mapping with 'metrics', got {type(d).__name__}")
        _refuse_unknown(d, {"metrics", "per_item", "histories", "benchmarks", "predictions",
                            "models"}, where)
        if "metrics" not in d:
            raise ValueError(f"{where}: 'metrics' (the metrics JSON path) is required")
        per_item, predictions = d.get("per_item"), d.get("predictions")
        return cls(metrics=Path(d["metrics"]),
                   per_item=None if per_item in (None, "") else Path(per_item),
                   histories=_paths(d.get("histories"), f"{where}.histories"),
                   benchmarks=_paths(d.get("benchmarks"), f"{where}.benchmarks"),
                   predictions=None if predictions in (None, "") else Path(predictions),
                   models=_paths(d.get("models"), f"{where}.models"))


@dataclass(frozen=True)
class ReportInputs:
    """Every file the report reads (see the module docstring for the dict layout)."""

    runs: dict[str, dict[int, SeedFiles]]
    server: dict[str, dict[int, dict[str, Path]]] = field(default_factory=dict)
    figure5: dict[str, list[Path]] = field(default_factory=dict)
    vqa_annotations: Path | None = None

    @classmethod
    def from_dict(cls, run_files: Mapping[str, Any],
                  server_files: Mapping[str, Any] | None = None,
                  figure5: Mapping[str, Any] | None = None,
                  vqa_annotations: str | Path | None = None,
                  default_seed: int = 0) -> ReportInputs:
        """Build from the workflow's dicts; ``default_seed`` labels runs given in the old
        single-seed layout."""
        runs: dict[str, dict[int, SeedFiles]] = {}
        for run, seeds in run_files.items():
            where = f"run_files[{run!r}]"
            _check_run_id(run, where)
            if not isinstance(seeds, Mapping) or not seeds:
                raise ValueError(f"{where}: expected a mapping seed -> files")
            if "metrics" in seeds:  # single-seed layout
                runs[run] = {default_seed: SeedFiles.from_dict(seeds, where)}
                continue
            runs[run] = {_seed(s, where): SeedFiles.from_dict(f, f"{where}[{s!r}]")
                         for s, f in seeds.items()}
        server: dict[str, dict[int, dict[str, Path]]] = {}
        for run, seeds in (server_files or {}).items():
            where = f"server_files[{run!r}]"
            _check_run_id(run, where)
            server[run] = {}
            for s, files in seeds.items():
                _refuse_unknown(files, set(SERVER_SPLITS), f"{where}[{s!r}]")
                server[run][_seed(s, where)] = {k: Path(v) for k, v in files.items()
                                                if v not in (None, "")}
        figures: dict[str, list[Path]] = {}
        for label, pngs in (figure5 or {}).items():
            if isinstance(pngs, str | Path):
                pngs = [pngs]
            figures[str(label)] = [Path(p) for p in pngs]
        return cls(runs=runs, server=server, figure5=figures,
                   vqa_annotations=None if vqa_annotations in (None, "") else
                   Path(vqa_annotations))

    def seeds(self, run: str) -> list[int]:
        return sorted(self.runs.get(run, {}))

"""The demo world's feature quality for the report: what its pre-trained backbone and its MIL
concept detector see, measured against what the world drew.

Two files of the demo workflow (absent on real data, where the backbones come pre-trained):

* ``pretrain/backbone_metrics.json`` (rule ``pretrain_demo_backbone``,
  :mod:`mia.features.demo_pretrain`): the backbone's held-out accuracy per label, beside the
  majority-class rate, and its training cost (with the rule's Snakemake benchmark);
* ``features/concept_quality.json`` (rule ``demo_concept_quality``,
  :mod:`mia.features.concept_quality`): precision and recall of the detector's top object words
  on the test images, beside chance and the frequency ranking.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mia.report.benchmarks import Benchmark, read_benchmark

#: Backbone labels in report order: (metrics key, what it is).
BACKBONE_ROWS = (
    ("box_shape", "shape of an object box"),
    ("box_color", "colour of an object box"),
    ("box_object", "shape and colour of an object box"),
    ("box_size", "size of an object box (small, large)"),
    ("box_position", "3x3 position of an object box"),
    ("background", "background (black, white)"),
    ("cell_exact", "layer4 cell: exact set of shapes and colours in it (or empty)"),
    ("cell_occupied", "layer4 cell holding an object: exact set of its shapes and colours"),
)


@dataclass(frozen=True)
class DemoFeatureQuality:
    """What the report prints; each part ``None`` when its file was not given."""

    backbone: Mapping[str, Any] | None
    backbone_rows: list[dict[str, Any]]
    backbone_cost: Benchmark | None
    concepts: Mapping[str, Any] | None


def _load(path: str | os.PathLike, what: str) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read the {what} ({type(err).__name__}: {err}); "
                         f"delete it and rerun the workflow to rebuild it") from err


def load_demo_feature_quality(files: Mapping[str, str | os.PathLike | None]
                              ) -> DemoFeatureQuality | None:
    """From ``{"backbone_metrics", "backbone_benchmark", "concept_quality"}`` (any may be
    missing or None); ``None`` when none is given."""
    if not any(files.get(k) for k in ("backbone_metrics", "concept_quality")):
        return None
    backbone = rows = None
    if files.get("backbone_metrics"):
        backbone = _load(files["backbone_metrics"], "demo backbone's held-out metrics")
        rows = [{"label": label, "accuracy": backbone[f"{key}_accuracy"],
                 "chance": backbone[f"{key}_chance"]}
                for key, label in BACKBONE_ROWS if f"{key}_accuracy" in backbone]
    cost = None
    bench = files.get("backbone_benchmark")
    if bench and Path(bench).is_file():
        cost = read_benchmark(bench)
    concepts = (_load(files["concept_quality"], "concept detector's quality")
                if files.get("concept_quality") else None)
    return DemoFeatureQuality(backbone, rows or [], cost, concepts)


def distinct_fraction(captions: Iterable[str | Sequence[str]]) -> float:
    """Distinct captions / captions: 1.0 when every image gets its own caption, 1/N when a
    blind captioner says the same thing of all N (the demo before its backbone saw: 2%)."""
    texts = [c if isinstance(c, str) else " ".join(c) for c in captions]
    return len(set(texts)) / len(texts) if texts else float("nan")

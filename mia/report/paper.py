"""The paper's published numbers, as data (``paper_results.yaml`` beside this file).

Kept as YAML rather than code so a reader can check every number against the paper's tables in
one place, and so tables and tests share exactly one copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml


@dataclass(frozen=True)
class PaperResults:
    """``results[run_id][metric]`` on the paper's scale; ``scale[task]`` maps ours to it."""

    results: dict[str, dict[str, float]]
    scale: dict[str, float]
    names: dict[str, str] = field(default_factory=dict)
    variants: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    metric_names: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def value(self, run: str, metric: str) -> float | None:
        """The published number, or ``None`` when the paper prints none for this run/metric."""
        return self.results.get(self.aliases.get(run, run), {}).get(metric)

    def header(self, metric: str) -> str:
        """The paper's column header for one of our metric names (``ROUGE_L`` -> ``ROUGE``)."""
        return self.metric_names.get(metric, metric)

    def label(self, run: str) -> str:
        """``Visual Attention w/ MIA`` for ``captioning/visual_attention/mia``."""
        _, baseline, variant = run.split("/")
        name = self.names.get(baseline, baseline)
        return name if variant == "base" else f"{name} {self.variants.get(variant, variant)}"


def load_paper_results(path: str | Path | None = None) -> PaperResults:
    """Read ``paper_results.yaml`` (or ``path``); errors name the file and the bad entry."""
    if path is None:
        text = resources.files("mia.report").joinpath("paper_results.yaml").read_text()
        where = "mia/report/paper_results.yaml"
    else:
        text, where = Path(path).read_text(), str(path)
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping at the top level")
    known = {"results", "scale", "names", "variants", "notes", "metric_names", "aliases"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown top-level key(s) {unknown}; expected {sorted(known)}")
    for key in ("results", "scale"):
        if not isinstance(data.get(key), dict):
            raise ValueError(f"{where}: top-level key {key!r} must be a mapping")
    for run, metrics in data["results"].items():
        if len(run.split("/")) != 3 or not isinstance(metrics, dict):
            raise ValueError(f"{where}: results.{run}: expected a run id task/baseline/variant "
                             "mapping metric names to numbers")
        for metric, value in metrics.items():
            if not isinstance(value, int | float):
                raise ValueError(f"{where}: results.{run}.{metric}: {value!r} is not a number")
    aliases = data.get("aliases") or {}
    for run, target in aliases.items():
        if target not in data["results"]:
            raise ValueError(f"{where}: aliases.{run}: {target!r} is not under results")
    return PaperResults(results=data["results"], scale=data["scale"],
                        names=data.get("names", {}), variants=data.get("variants", {}),
                        notes=data.get("notes", []), metric_names=data.get("metric_names", {}),
                        aliases=aliases)

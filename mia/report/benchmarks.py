"""Snakemake benchmark files: wall time, peak memory and CPU time of one job.

Snakemake writes a TSV with a header (``s``, ``h:m:s``, ``max_rss``, ...; memory in MB) and one
row per repetition; the report shows the first repetition.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Benchmark:
    wall_s: float
    max_rss_mb: float | None
    cpu_time_s: float | None


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "", "-", "NA") else None
    except ValueError:
        return None


def read_benchmark(path: str | os.PathLike) -> Benchmark:
    """The first row of a Snakemake benchmark TSV; an error names the file when it is malformed."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows or _number(rows[0].get("s")) is None:
        raise ValueError(f"{path}: not a Snakemake benchmark file (expected a header with 's' "
                         "and at least one row)")
    row = rows[0]
    return Benchmark(wall_s=float(row["s"]), max_rss_mb=_number(row.get("max_rss")),
                     cpu_time_s=_number(row.get("cpu_time")))

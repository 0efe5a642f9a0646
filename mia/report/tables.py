"""The paper's tables with our numbers: rows and columns as the config lists them (the paper's
order), each cell ours (mean +- sd over seeds) / paper / ours - paper.

Rows compete within their baseline: a baseline against its ``w/ MIA`` (Tables 1-3), the three
rows of one model in Table 4 and section 3.3, the five N of one model in Figure 4's table. The
best of each column within such a group is marked, ours and the paper's separately (the paper's
marks reproduce its bold face).

VQA tables get two extra columns first, Test-dev and Test-std, which hold the evaluation
server's overall accuracy when the server result files were fetched; the config's metrics (overall
and per answer type) follow, computed locally on the evaluation split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mia.report.inputs import SERVER_SPLITS
from mia.report.paper import PaperResults
from mia.report.results import RunResult, Value


@dataclass(frozen=True)
class Column:
    key: str  # metric name in our results and in paper_results.yaml
    header: str  # as the paper prints it
    server: bool = False  # read from the VQA evaluation server's result files


@dataclass(frozen=True)
class Cell:
    ours: Value
    paper: float | None
    best_ours: bool = False
    best_paper: bool = False
    note: str | None = None  # footnote marker of the reason ours is n/a
    flags: tuple[tuple[str, str], ...] = ()  # (badge, footnote marker): what the number hides

    @property
    def diff(self) -> float | None:
        if self.ours.mean is None or self.paper is None:
            return None
        return self.ours.mean - self.paper


@dataclass(frozen=True)
class Row:
    run: str
    label: str
    group: str  # task/baseline: the rows that compete
    seeds: tuple[int, ...]
    cells: tuple[Cell, ...]


@dataclass(frozen=True)
class Table:
    key: str
    title: str
    task: str
    columns: tuple[Column, ...]
    column_groups: tuple[tuple[str, int], ...]  # (label, span) over the columns, may be empty
    rows: tuple[Row, ...]
    notes: tuple[tuple[str, str], ...]  # (marker, text): why cells are n/a

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(c.key for c in self.columns)


def short_reason(reason: str) -> str:
    """A few words for a table cell; the whole reason goes to the table's notes."""
    lowered = reason.lower()
    if lowered.startswith("seed ") and " is " in lowered:
        return "not a number"
    for needle, short in (("not requested", "not requested"), ("java", "no Java"),
                          ("corenlp", "no CoreNLP jars"), ("no server result", "not submitted"),
                          ("not computed", "not computed")):
        if needle in lowered:
            return short
    return reason if len(reason) <= 24 else reason[:22].rstrip() + "..."


def _best(values: Sequence[float | None], digits: int) -> list[bool]:
    """Which values are the largest, at the precision shown (ties all win); nothing is marked
    when fewer than two values compete."""
    shown = [None if v is None else round(v, digits) for v in values]
    present = [v for v in shown if v is not None]
    if len(present) < 2:
        return [False] * len(values)
    top = max(present)
    return [v is not None and v == top for v in shown]


def _columns(spec: Mapping[str, Any], paper: PaperResults) -> tuple[list[Column],
                                                                    list[tuple[str, int]]]:
    local = [Column(m, paper.header(m)) for m in spec["metrics"]]
    if spec["task"] != "vqa":
        return local, []
    server = [Column(s, paper.header(s), server=True) for s in SERVER_SPLITS]
    split = spec.get("split", "val")
    return server + local, [("evaluation server", len(server)), (f"ours on {split} (local)",
                                                                  len(local))]


def build_table(key: str, spec: Mapping[str, Any], results: Mapping[str, RunResult],
                paper: PaperResults) -> Table:
    """Table ``key`` of the config (``title``, ``task``, ``metrics``, ``runs``); every run of
    the spec must be in ``results``."""
    columns, groups = _columns(spec, paper)
    runs = list(spec["runs"])
    missing = [r for r in runs if r not in results]
    if missing:
        raise ValueError(f"table {key}: no results for run(s) {missing}")
    reasons: dict[str, str] = {}  # full reason or note -> footnote marker

    def ours(run: str, column: Column) -> Value:
        result = results[run]
        return result.server_value(column.key) if column.server else result.value(column.key)

    values = {(run, c.key): ours(run, c) for run in runs for c in columns}
    best_ours: dict[tuple[str, str], bool] = {}
    best_paper: dict[tuple[str, str], bool] = {}
    group_of = {run: "/".join(run.split("/")[:2]) for run in runs}
    for group in dict.fromkeys(group_of.values()):
        members = [r for r in runs if group_of[r] == group]
        for c in columns:
            for run, flag in zip(members, _best([values[(r, c.key)].mean for r in members], 2),
                                 strict=True):
                best_ours[(run, c.key)] = flag
            for run, flag in zip(members, _best([paper.value(r, c.key) for r in members], 1),
                                 strict=True):
                best_paper[(run, c.key)] = flag

    def marker(text: str) -> str:
        return reasons.setdefault(text, "abcdefghijklmnopqrstuvwxyz"[len(reasons) % 26])

    rows = []
    for run in runs:
        outcomes = [o for o in results[run].stage_outcome("scst") if o.kept_start]
        cells = []
        for c in columns:
            value = values[(run, c.key)]
            note = None
            if value.mean is None and value.reason:
                note = marker(f"n/a: {value.reason}")
            flags = []
            if value.dropped and value.mean is not None:
                flags.append((f"{value.n} of {value.seeds_total} seeds", marker(
                    "; ".join(f"seed {s} left out: {why}" for s, why in value.dropped))))
            if value.mean is not None and value.flags:
                flags.append(("constant", ",".join(marker(f) for f in value.flags)))
            if outcomes and not c.server and value.mean is not None:
                which = ("" if len(outcomes) == len(results[run].seeds) else
                         f" (seed{'s' if len(outcomes) > 1 else ''} "
                         f"{', '.join(str(o_seed) for o_seed in _seeds_of(results[run], outcomes))})")
                flags.append(("XE weights", marker(
                    f"{paper.label(run)}{which}: {outcomes[0].note()}")))
            cells.append(Cell(value, paper.value(run, c.key), best_ours[(run, c.key)],
                              best_paper[(run, c.key)], note, tuple(flags)))
        rows.append(Row(run, paper.label(run), group_of[run],
                        tuple(sorted(results[run].seeds)), tuple(cells)))
    notes = tuple((m, reason) for reason, m in reasons.items())
    return Table(key, spec.get("title", key), spec["task"], tuple(columns), tuple(groups),
                 tuple(rows), notes)


def _seeds_of(result: RunResult, outcomes: Sequence[object]) -> list[int]:
    return [seed for seed, r in result.seeds.items() if any(o in r.stages.values()
                                                            for o in outcomes)]

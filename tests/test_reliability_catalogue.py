"""docs/RELIABILITY.md cannot drift from the suite: every test it names exists, and every test
of tests/test_reliability_*.py is named in it.

Test references are read from the last column of the tables (backticked
``tests/<file>.py::<test>[<param>]``; ``*`` matches any text) and matched against the node ids
pytest collects from the files they name.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "RELIABILITY.md"
REF = re.compile(r"`(tests/[\w/]+\.py)::([^`]+)`")
#: The groups the issue asks for (the lead fills "Training and workflow").
GROUPS = ("Config", "Raw data files", "Images", "Stores", "Downloads and archives",
          "Training and workflow (lead)")


def _rows() -> list[list[str]]:
    """Cells of every table row that is not a header or a separator line."""
    rows = []
    for line in DOC.read_text().splitlines():
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if cells[0] == "Fault injected":
            continue
        rows.append(cells)
    return rows


def _pattern(test: str) -> re.Pattern:
    return re.compile(".*".join(re.escape(part) for part in test.split("*")) + r"\Z")


@pytest.fixture(scope="module")
def refs() -> list[tuple[str, str]]:
    return [m.groups() for row in _rows() for m in REF.finditer(row[-1])]


@pytest.fixture(scope="module")
def collected(refs) -> set[str]:
    files = sorted({f for f, _ in refs} | {p.relative_to(REPO).as_posix()
                                           for p in REPO.glob("tests/test_reliability_*.py")})
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                          "-p", "no:cacheprovider", *files], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    ids = {line.strip() for line in out.stdout.splitlines() if "::" in line}
    assert ids, out.stdout[-2000:] + out.stderr[-2000:]
    return ids


def test_every_row_is_complete_and_there_are_enough():
    rows = _rows()
    assert len(rows) >= 100
    for row in rows:
        assert len(row) == 4, row
        assert row[0] and row[1] and REF.search(row[3]), row
    text = DOC.read_text()
    for group in GROUPS:
        assert re.search(rf"^## {re.escape(group)}", text, re.M), group


def test_every_named_test_exists(refs, collected):
    missing = [f"{f}::{t}" for f, t in refs
               if not any(_pattern(f"{f}::{t}").match(node) for node in collected)]
    assert not missing, f"named in {DOC.name} but not collected: {missing}"


def test_every_reliability_test_is_named(refs, collected):
    """Each case (parameter included) of tests/test_reliability_*.py has a row: adding a fault
    to a test without adding it here fails."""
    patterns = [_pattern(f"{f}::{t}") for f, t in refs]
    cases = [node for node in collected if node.startswith("tests/test_reliability_")
             and "test_reliability_catalogue.py" not in node]
    unnamed = [node for node in cases if not any(p.match(node) for p in patterns)]
    assert cases and not unnamed, f"add rows to {DOC.name} for: {unnamed}"

"""The arrows of the import graph point down (STYLE.md): a task package never imports another
for its plumbing, and the floors below the tasks import no task at all.

Read statically from every module's source (function-level imports included), so a lazy
``from mia.captioning... import`` inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mia"

#: package (or module) -> the mia packages it must never import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "vqa": ("mia.captioning", "mia.report"),
    "captioning": ("mia.vqa", "mia.report"),
    "training": ("mia.captioning", "mia.vqa", "mia.report"),
    "data": ("mia.captioning", "mia.vqa", "mia.report", "mia.training"),
    "evaluation": ("mia.captioning", "mia.vqa", "mia.report", "mia.training"),
    # features may use the run lifecycle (signals, exit 75) of mia.training for resumable
    # extraction: it is plumbing, not a task
    "features": ("mia.captioning", "mia.vqa", "mia.report"),
    "runtime.py": ("mia.captioning", "mia.vqa", "mia.report", "mia.training", "mia.features"),
}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules_of(part: str) -> list[Path]:
    target = PACKAGE / part
    return [target] if target.suffix == ".py" else sorted(target.rglob("*.py"))


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_no_upward_or_sideways_imports(part: str) -> None:
    files = modules_of(part)
    assert files, f"mia/{part} has no modules: update FORBIDDEN"
    bad = [f"{path.relative_to(PACKAGE.parent)} imports {name}"
           for path in files for name in sorted(imported_modules(path))
           if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[part])]
    assert not bad, "\n".join(bad)


def test_the_check_sees_a_lazy_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from mia.captioning.config import from_dict\n")
    assert "mia.captioning.config" in imported_modules(module)

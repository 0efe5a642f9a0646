"""`make setup` says where torch comes from and, on a machine without an NVIDIA GPU, takes
PyTorch's CPU wheel index instead of PyPI's CUDA build (GBs of nvidia-* wheels); a torch that pip
already finds locally (this project's CI: a wheel in pip's find-links) is used as it is."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _tool():
    spec = importlib.util.spec_from_file_location("torch_source",
                                                  REPO / "scripts" / "torch_source.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_torch_source_decision() -> None:
    tool = _tool()
    assert tool.pinned_torch(REPO / "constraints.txt") == "2.13.0"
    cpu = ["--extra-index-url", "https://download.pytorch.org/whl/cpu"]
    assert tool.decide("2.13.0", gpu=False, local=False)[0] == cpu  # a stock laptop
    assert tool.decide("2.13.0", gpu=True, local=False)[0] == []  # PyPI's CUDA build
    args, words = tool.decide("2.13.0", gpu=False, local=True)  # CI: the local CPU wheel
    assert args == [] and "local sources" in words
    assert tool.decide("2.13.0", choice="none", gpu=False, local=False)[0] == []
    assert tool.decide("2.13.0", choice="https://mirror/whl", gpu=True)[0] == [
        "--extra-index-url", "https://mirror/whl"]
    assert "+cpu" in tool.decide("2.13.0", gpu=False, local=False)[1]


def test_torch_source_on_this_machine_and_in_the_makefile(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "torch_source.py")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("make setup: installing torch 2.13.0")
    args = done.stdout.split()
    assert args in ([], ["--extra-index-url", "https://download.pytorch.org/whl/cpu"])
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    plan = subprocess.run([make, "-n", "-B", "setup"], cwd=REPO, capture_output=True, text=True,
                          timeout=60).stdout
    source = plan.index("scripts/torch_source.py")
    assert source < plan.index("$(cat .venv/torch-source) -e")

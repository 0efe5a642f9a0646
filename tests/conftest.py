"""Shared test set-up: paths to fixtures, and skips (with the reason printed) for missing tools."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch_threads import one_torch_thread
from workflow_support import run_test_dag_locally

TESTS_DIR = Path(__file__).resolve().parent
DATA_DIR = TESTS_DIR / "data"
REPO_ROOT = TESTS_DIR.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_java = shutil.which("java") is not None
    has_gpu = torch.cuda.is_available()
    for item in items:
        if "java" in item.keywords and not has_java:
            item.add_marker(pytest.mark.skip(reason="java not on PATH (needed by PTB tokenizer/METEOR/SPICE)"))
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="no CUDA GPU on this machine"))


@pytest.fixture
def one_thread():
    """torch on one thread for the test (modules ask for it with ``pytestmark``); a module-scoped
    fixture is built before this runs, so it uses :func:`one_torch_thread` itself."""
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def workflow_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test DAG run once on 2 local cores (tests/workflow_support.py); its work directory."""
    return run_test_dag_locally(tmp_path_factory.mktemp("workflow"))

"""Running the real workflow from tests: the snakemake call and the test DAG's local run.

Shared by tests/test_workflow_demo.py (the DAG on 2 local cores) and tests/test_slurm_workflow.py
(the same DAG through the Slurm profile, compared with the local run). The local run is a
session fixture (see conftest.py) so it is computed once however many modules use it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

SNAKEMAKE = shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")
REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_CONFIGS = (REPO_ROOT / "config.yaml", REPO_ROOT / "config" / "demo.yaml",
                REPO_ROOT / "config" / "test.yaml")
# The whole test DAG (about 110 jobs) on 2 cores; a loaded machine can take twice its usual time.
TEST_DAG_TIMEOUT_S = 1800
# One BLAS thread per process: the same arithmetic (so the same numbers) locally and on Slurm.
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
NEEDED_MODULES = ("mia.data.demo", "mia.features.grid", "mia.features.concepts",
                  "mia.evaluation.cider", "mia.evaluation.cli")


def snakemake_cmd(workdir: Path, *args: str, configfiles: tuple[Path, ...] = TEST_CONFIGS
                  ) -> list[str]:
    """The snakemake command line for the test DAG in ``workdir`` (the checkout stays clean)."""
    return [SNAKEMAKE, "-s", str(REPO_ROOT / "Snakefile"), "--directory", str(workdir),
            "--configfile", *map(str, configfiles), *args]


def snakemake(workdir: Path, *args: str, timeout: int = 600,
              configfiles: tuple[Path, ...] = TEST_CONFIGS) -> subprocess.CompletedProcess:
    env = {**os.environ, **SINGLE_THREAD_ENV}
    return subprocess.run(snakemake_cmd(workdir, *args, configfiles=configfiles),
                          capture_output=True, text=True, timeout=timeout, env=env)


def job_counts(output: str) -> dict[str, int]:
    """The `Job stats` table of a Snakemake run or dry run: {rule: count}."""
    block = output.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"^(\w+)\s+(\d+)$", block, flags=re.M) if m.group(1) != "total"}


def rule_logs(workdir: Path, name: str = "test") -> str:
    """Every rule log of a run, newest 2000 characters each, for failure messages."""
    return "\n".join(f"--- {p}\n{p.read_text()[-2000:]}"
                     for p in sorted((workdir / f"results/{name}/logs").rglob("*.log")))


def run_test_dag_locally(workdir: Path) -> Path:
    """The whole test DAG on 2 local cores; fails the test with the logs if any job fails."""
    for module in NEEDED_MODULES:
        pytest.importorskip(module, reason=f"{module} (needed by the test DAG) is not written yet")
    started = time.monotonic()
    out = snakemake(workdir, "--cores", "2", timeout=TEST_DAG_TIMEOUT_S)
    print(f"test DAG: {time.monotonic() - started:.0f} s on 2 cores")
    assert out.returncode == 0, out.stderr[-6000:] + rule_logs(workdir)[-6000:]
    return workdir

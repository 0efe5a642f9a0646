"""A local single-node Slurm for tests, and a test copy of the Slurm profile.

Import the fixture into a test module to use it (it is session-scoped, so every module shares one
cluster)::

    from slurm_support import local_slurm, make_test_profile  # noqa: F401

`local_slurm` runs ``scripts/slurm/local_cluster.sh start`` once per session (apt installs Slurm
and munge if missing, so the first start on a bare machine takes ~10-20 s), skips with the script's
own message when it cannot start (not root, no apt, ...), points ``SLURM_CONF`` at the cluster for
the whole session, and stops the daemons at the end (unless they were running before).
`make_test_profile` writes the real ``profiles/slurm/config.yaml`` with only the knobs a test
needs changed (squeue status checks, since there is no accounting database; seconds instead of
minutes of polling), so the tests exercise the profile users get.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
CLUSTER_SCRIPT = REPO_ROOT / "scripts" / "slurm" / "local_cluster.sh"
PROFILE = REPO_ROOT / "profiles" / "slurm" / "config.yaml"
START_TIMEOUT_S = 300  # apt on a slow mirror; a started cluster answers in ~2 s

# What a test run changes in the user profile, and why:
TEST_PROFILE_OVERRIDES: dict[str, object] = {
    "slurm-status-command": "squeue",  # no slurmdbd here, so sacct knows no jobs
    "slurm-init-seconds-before-status-checks": 2,  # the default waits 40 s before the first poll
    "slurm-keep-successful-logs": True,  # tests read the per-job Slurm logs
    "latency-wait": 5,  # one local filesystem: outputs appear at once
    "jobs": 4,
}
TEST_DEFAULT_RESOURCES = {"mem_mb": 200, "runtime": 10}  # fit the CI machine's small node


@dataclass(frozen=True)
class LocalSlurm:
    """A running local cluster: its config file and the env that clients need to reach it."""

    state_dir: Path
    slurm_conf: Path

    def env(self, **extra: str) -> dict[str, str]:
        """os.environ plus SLURM_CONF (and ``extra``), for subprocesses that talk to Slurm."""
        return {**os.environ, "SLURM_CONF": str(self.slurm_conf), **extra}


def _run_cluster_script(
    action: str, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["timeout", "-k", "10", str(int(timeout)), "bash", str(CLUSTER_SCRIPT), action],
        env=env, capture_output=True, text=True, check=False,
    )


@pytest.fixture(scope="session")
def local_slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSlurm]:
    """Start the local cluster once per session (or skip, printing why); stop it at the end."""
    if os.geteuid() != 0:
        pytest.skip("local Slurm needs root (scripts/slurm/local_cluster.sh runs daemons as root)")
    state_dir = Path(os.environ.get("MIA_SLURM_DIR", "/tmp/mia-slurm"))
    env = {**os.environ, "MIA_SLURM_DIR": str(state_dir)}
    # A cluster someone started before the session is used and left running afterwards.
    already_running = _run_cluster_script("status", env, 30).returncode == 0
    started = _run_cluster_script("start", env, START_TIMEOUT_S)
    if started.returncode != 0:
        if not already_running:
            _run_cluster_script("stop", env, 60)  # whatever half-started
        pytest.skip(
            f"local Slurm did not start (rc={started.returncode}): "
            f"{(started.stderr or started.stdout).strip()[-2000:]}"
        )
    cluster = LocalSlurm(state_dir=state_dir, slurm_conf=state_dir / "slurm.conf")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.slurm_conf)  # for snakemake/squeue called in-process
    try:
        yield cluster
    finally:
        if not already_running:
            _run_cluster_script("stop", env, 60)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous


def make_test_profile(directory: Path, **overrides: object) -> Path:
    """Write profiles/slurm/config.yaml with the test overrides into ``directory``; return it."""
    config = yaml.safe_load(PROFILE.read_text())
    config.update(TEST_PROFILE_OVERRIDES)
    config["default-resources"] = {**config["default-resources"], **TEST_DEFAULT_RESOURCES}
    config.update(overrides)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return directory

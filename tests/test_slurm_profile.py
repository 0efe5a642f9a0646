"""profiles/slurm/config.yaml as the Slurm executor plugin turns it into sbatch options.

No cluster needed: the profile's default resources are evaluated the way Snakemake evaluates
`--default-resources` expressions, merged under a rule's own resources, and handed to the
plugin's own sbatch-command builder. A CPU-only rule must never ask for a GPU; gpu=1 and
gpu_model must become --gpus; the preemption signal must reach sbatch and leave jobs time to run.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import yaml
from slurm_support import PROFILE
from snakemake.resources import Resource
from snakemake_executor_plugin_slurm.submit_string import get_submit_command
from snakemake_executor_plugin_slurm.utils import set_gres_string
from snakemake_executor_plugin_slurm.validation import validate_slurm_extra

SIGNAL_RESOLUTION_S = 60  # Slurm may send --signal up to 60 s earlier than asked


class _Resources(dict):
    """Job resources as the plugin reads them: both `.get(name)` and `.name`."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(name) from err


def _profile() -> dict:
    return yaml.safe_load(PROFILE.read_text())


def _default_resources() -> dict:
    """Evaluate each default-resources expression like `snakemake --default-resources` does."""
    return {
        name: Resource.cli_evaluator(
            name, str(expr), wildcards=None, input=None, attempt=1, async_run=None
        )
        for name, expr in _profile()["default-resources"].items()
    }


def _sbatch(threads: int = 1, **rule_resources) -> str:
    """The sbatch command the plugin would run for a rule with these resources."""
    job = SimpleNamespace(
        threads=threads, resources=_Resources({**_default_resources(), **rule_resources})
    )
    validate_slurm_extra(job)  # raises if slurm_extra sets an option the plugin manages
    params = {
        "run_uuid": "run", "slurm_logfile": "log", "comment_str": "rule_x",
        "account": "", "partition": "", "workdir": "/w",
    }
    return get_submit_command(job, params) + set_gres_string(job)


def test_profile_uses_slurm_executor_with_retries():
    profile = _profile()
    assert profile["executor"] == "slurm"
    assert profile["retries"] >= 1
    assert profile["rerun-incomplete"] is True
    assert profile["latency-wait"] >= 30
    assert profile["keep-going"] is True


def test_cpu_only_rule_never_requests_a_gpu():
    call = _sbatch(threads=4, mem_mb=8000, runtime=120)
    assert "--gpus" not in call and "--gres" not in call
    assert "--cpus-per-task=4" in call.split()
    assert re.search(r"--mem 8000\b", call) and re.search(r"-t 120\b", call)


@pytest.mark.parametrize(
    ("resources", "expected"),
    [({"gpu": 1}, "--gpus=1"), ({"gpu": 2, "gpu_model": "a100"}, "--gpus=a100:2")],
)
def test_gpu_rule_requests_its_gpus(resources, expected):
    call = _sbatch(threads=4, **resources)
    assert call.split().count(expected) == 1
    assert "--cpus-per-task=4" in call.split()


def test_partition_and_account_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("MIA_SLURM_PARTITION", "gpu-long")
    monkeypatch.setenv("MIA_SLURM_ACCOUNT", "proj42")
    resources = _default_resources()
    assert resources["slurm_partition"] == "gpu-long"
    assert resources["slurm_account"] == "proj42"
    monkeypatch.delenv("MIA_SLURM_PARTITION")
    monkeypatch.delenv("MIA_SLURM_ACCOUNT")
    # Empty = the plugin falls back to the cluster's default partition and its account guess.
    resources = _default_resources()
    assert resources["slurm_partition"] == "" and resources["slurm_account"] == ""


def test_preemption_signal_reaches_sbatch_and_leaves_jobs_time():
    call = _sbatch()
    match = re.search(r"--signal=(B:)?([A-Z0-9]+)@(\d+)", call)
    assert match, call
    batch_only, signal_name, lead_s = match.groups()
    # To the job steps (where the rule runs), not only the batch shell; TERM, which Snakemake
    # inside the job answers by waiting for its running job (USR1 would kill it at once).
    assert batch_only is None and signal_name == "TERM"
    # The default runtime must outlast the signal's lead time, or every job is signalled at start.
    assert _default_resources()["runtime"] * 60 > int(lead_s) + SIGNAL_RESOLUTION_S

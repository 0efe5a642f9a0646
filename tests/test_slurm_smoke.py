"""The Slurm profile against a real (local, single-node) Slurm: sbatch, GPU gres, preemption.

Runs tests/data/slurm_smoke/Snakefile with `snakemake --profile <test copy of profiles/slurm>`.
Checks that every job ran as its own Slurm job, that only the rule declaring gpu=1 was allocated
the (fake) GPU, and that a job cancelled mid-run is retried by Snakemake and resumes from its
checkpoint instead of starting over. About a minute on 2 cores; needs root (see slurm_support).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_support import LocalSlurm, local_slurm, make_test_profile  # noqa: F401

pytestmark = pytest.mark.slurm

SMOKE = Path(__file__).resolve().parent / "data" / "slurm_smoke"
RUN_TIMEOUT_S = 150


def snakemake_command(profile: Path, workdir: Path, targets: list[str], config: dict) -> list[str]:
    """The snakemake call, under `timeout -k` so a lost job can never hang CI."""
    return [
        "timeout", "-k", "10", str(RUN_TIMEOUT_S),
        sys.executable, "-m", "snakemake", *targets,
        "--profile", str(profile),
        "--executor", "slurm",
        "--snakefile", str(SMOKE / "Snakefile"),
        "--directory", str(workdir),
        "--config", *(f"{key}={value}" for key, value in config.items()),
    ]


def job_states(cluster: LocalSlurm, job_ids: list[str]) -> dict[str, str]:
    """State of each job as slurmctld knows it (finished jobs stay visible for MinJobAge)."""
    out = subprocess.run(
        ["squeue", "--noheader", "--states=all", "--format=%i|%T", "--jobs", ",".join(job_ids)],
        env=cluster.env(), capture_output=True, text=True, check=True,
    ).stdout
    return dict(line.split("|", 1) for line in out.split())


def fail_with_log(message: str, proc: subprocess.CompletedProcess | None, workdir: Path) -> None:
    logs = [proc.stdout[-4000:] if proc and proc.stdout else ""]
    logs += [f"== {p}\n{p.read_text()[-2000:]}" for p in (workdir / ".snakemake").rglob("*.log")]
    pytest.fail(message + "\n" + "\n".join(logs))


def test_every_job_goes_through_sbatch_and_only_gpu_rule_gets_gpu(
    local_slurm: LocalSlurm, tmp_path: Path  # noqa: F811
) -> None:
    profile = make_test_profile(tmp_path / "profile")
    workdir = tmp_path / "run"
    proc = subprocess.run(
        snakemake_command(profile, workdir, ["all"], {"steps": 2, "step_seconds": 0.1}),
        env=local_slurm.env(), capture_output=True, text=True, check=False,
    )
    proc.stdout += proc.stderr
    if proc.returncode != 0:
        fail_with_log(f"snakemake exited {proc.returncode}", proc, workdir)

    gpu = json.loads((workdir / "results" / "gpu_probe.json").read_text())
    cpu = json.loads((workdir / "results" / "cpu_probe.json").read_text())
    count = json.loads((workdir / "results" / "count.json").read_text())
    ids = {"gpu_probe": gpu["slurm_job_id"], "cpu_probe": cpu["slurm_job_id"],
           "preemptible_count": count["slurm_job_id"]}

    # Each job ran inside its own Slurm allocation, submitted by this run (its sbatch log exists).
    assert all(job_id and job_id.isdigit() for job_id in ids.values()), ids
    assert len(set(ids.values())) == 3, ids
    for rule, job_id in ids.items():
        assert (workdir / ".snakemake" / "slurm_logs" / f"rule_{rule}" / f"{job_id}.log").is_file()
    assert set(job_states(local_slurm, list(ids.values())).values()) == {"COMPLETED"}

    # gpu=1 became a GPU gres on the job; the CPU-only rule asked for no GPU at all.
    assert "gres:gpu:1" in gpu["scontrol"].get("TresPerJob", ""), gpu
    assert gpu["cuda_visible_devices"] == "0", gpu
    assert not any("gpu" in value for value in cpu["scontrol"].values()), cpu
    assert cpu["cuda_visible_devices"] is None, cpu
    assert count["done_by"] == [1, 1] and count["preempted"] == []


def _running_job(cluster: LocalSlurm, comment: str) -> str | None:
    out = subprocess.run(
        ["squeue", "--noheader", "--states=RUNNING", "--format=%i|%k"],
        env=cluster.env(), capture_output=True, text=True, check=True,
    ).stdout
    return next((i for i, k in (line.split("|", 1) for line in out.split()) if k == comment), None)


def test_cancelled_job_is_retried_and_resumes_from_checkpoint(
    local_slurm: LocalSlurm, tmp_path: Path  # noqa: F811
) -> None:
    steps, cancel_after = 8, 2
    profile = make_test_profile(tmp_path / "profile")
    workdir = tmp_path / "run"
    state = workdir / "state" / "count.json"
    config = {"steps": steps, "step_seconds": 1.0}
    with subprocess.Popen(
        snakemake_command(profile, workdir, ["preemptible_count"], config),
        env=local_slurm.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ) as proc:
        # Wait until the first attempt has checkpointed a few steps, then cancel its Slurm job:
        # Slurm sends SIGTERM to every process of the job and SIGKILL KillWait seconds later.
        cancelled, deadline = None, time.monotonic() + 90
        while cancelled is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            if state.exists() and len(json.loads(state.read_text())["done_by"]) >= cancel_after:
                cancelled = _running_job(local_slurm, "rule_preemptible_count")
        if cancelled is None:
            proc.kill()
            fail_with_log("the job never reached the cancel point", None, workdir)
        subprocess.run(["scancel", cancelled], env=local_slurm.env(), check=True)
        output, _ = proc.communicate(timeout=RUN_TIMEOUT_S + 20)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, output, "")
    if proc.returncode != 0:
        fail_with_log(f"snakemake exited {proc.returncode} after the cancel", result, workdir)

    count = json.loads((workdir / "results" / "count.json").read_text())
    assert job_states(local_slurm, [cancelled])[cancelled] == "CANCELLED"
    assert count["slurm_job_id"] != cancelled  # the retry is a new Slurm job
    # Attempt 1 got SIGTERM (15), saved its progress k and stopped; attempt 2 did exactly the rest.
    [preempted] = count["preempted"]
    k = preempted["at_step"]
    assert preempted["attempt"] == 1 and preempted["signal"] == 15
    assert cancel_after <= k < steps
    assert count["resumed_from"] == k
    assert count["done_by"] == [1] * k + [2] * (steps - k)

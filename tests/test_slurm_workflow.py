"""The real workflow on a real (local, single-node) Slurm through `--profile`, unchanged.

1. The test DAG's Visual Attention runs (the demo world, its pre-training, stores, features,
   concepts, training, decoding: every stage a captioning row goes through before its split's
   evaluation) run with `--executor slurm` and the test copy of profiles/slurm: every job must
   have gone through `sbatch` (a Slurm job id in the submission log and a per-job Slurm log),
   and their captions must equal the local run's (tests/workflow_support.py): same Snakefile,
   same config, same results. (The evaluation job scores every captioning run of the split at
   once, so it would need the whole test DAG, which would take the Slurm plugin's status
   polling many minutes; the local run covers the rest.)
2. In that Slurm run's directory, a longer training of one run is started, cancelled with
   `scancel` mid-training, and the workflow's retry (a new Slurm job) resumes from the checkpoint
   the cancelled job saved on SIGTERM, then finishes with every epoch trained exactly once.

About two minutes on 2 cores; needs root for the local cluster (see slurm_support).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from slurm_support import LocalSlurm, local_slurm, make_test_profile  # noqa: F401
from workflow_support import (
    NEEDED_MODULES,
    REPO_ROOT,
    SINGLE_THREAD_ENV,
    TEST_CONFIGS,
    job_counts,
    rule_logs,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.java]

RUN_TIMEOUT_S = 600
LOCAL_RULES = {"all", "render_report"}  # run by Snakemake itself, never submitted
RUN = "visual_attention/mia"
SEED = 123
TARGETS = tuple(f"results/test/runs/captioning/visual_attention/{v}/s{SEED}/captions_test.json"
                for v in ("base", "mia"))
LONG_EPOCHS = 12  # long enough to cancel mid-training: about 2.5 s per epoch here
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+)")


def slurm_snakemake(profile: Path, workdir: Path, *targets: str,
                    configfiles: tuple[Path, ...] = TEST_CONFIGS) -> list[str]:
    """`snakemake --profile ... --executor slurm` on the real Snakefile, under `timeout -k`
    (targets first: after --configfile they would be read as config files)."""
    return ["timeout", "-k", "10", str(RUN_TIMEOUT_S), sys.executable, "-m", "snakemake",
            *targets, "-s", str(REPO_ROOT / "Snakefile"), "--directory", str(workdir),
            "--configfile", *map(str, configfiles),
            "--profile", str(profile), "--executor", "slurm"]


def slurm_env(cluster: LocalSlurm) -> dict[str, str]:
    return cluster.env(**SINGLE_THREAD_ENV)


@pytest.fixture(scope="module")
def slurm_run(local_slurm: LocalSlurm, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
              ) -> tuple[Path, Path, str]:
    """The test DAG through the Slurm profile: (work directory, profile, snakemake output)."""
    for module in NEEDED_MODULES:
        pytest.importorskip(module, reason=f"{module} (needed by the test DAG) is not written yet")
    base = tmp_path_factory.mktemp("slurm_workflow")
    profile = make_test_profile(base / "profile")
    workdir = base / "run"
    started = time.monotonic()
    proc = subprocess.run(slurm_snakemake(profile, workdir, *TARGETS), env=slurm_env(local_slurm),
                          capture_output=True, text=True, check=False)
    print(f"test DAG on Slurm: {time.monotonic() - started:.0f} s")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:] + rule_logs(workdir)[-6000:]
    return workdir, profile, output


def test_every_job_went_through_sbatch(slurm_run: tuple[Path, Path, str],
                                       local_slurm: LocalSlurm) -> None:  # noqa: F811
    workdir, _, output = slurm_run
    counts = job_counts(output)
    submitted = dict(SUBMITTED.findall(output))  # snakemake job id -> Slurm job id
    expected = sum(n for rule, n in counts.items() if rule not in LOCAL_RULES)
    assert expected >= 10 and len(submitted) == expected, (counts, submitted)
    slurm_ids = sorted(set(submitted.values()))
    assert len(slurm_ids) == expected  # one Slurm job per Snakemake job

    # Each Slurm job left its log under .snakemake/slurm_logs/rule_<rule>/..., per rule as many
    # as the Job stats table counts; slurmctld reports every one COMPLETED.
    logs = list((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert sorted(p.stem for p in logs) == slurm_ids
    per_rule: dict[str, int] = {}
    for p in logs:
        rule = p.relative_to(workdir / ".snakemake" / "slurm_logs").parts[0].removeprefix("rule_")
        per_rule[rule] = per_rule.get(rule, 0) + 1
    assert per_rule == {r: n for r, n in counts.items() if r not in LOCAL_RULES}
    states = subprocess.run(
        ["squeue", "--noheader", "--states=all", "--format=%i|%T", "--jobs", ",".join(slurm_ids)],
        env=local_slurm.env(), capture_output=True, text=True, check=True).stdout.split()
    assert {line.split("|")[1] for line in states} == {"COMPLETED"}, states


def test_slurm_results_equal_local_results(slurm_run: tuple[Path, Path, str],
                                           workflow_run: Path) -> None:
    workdir, _, _ = slurm_run
    for rel in TARGETS:
        on_slurm = json.loads((workdir / rel).read_text())
        local = json.loads((workflow_run / rel).read_text())
        assert on_slurm == local, f"{rel}: Slurm {on_slurm} != local {local}"
        history = rel.replace("captions_test.json", "xe/history.json")
        strip = [{k: v for k, v in row.items() if not k.endswith("wall_s")}
                 for row in json.loads((workdir / history).read_text())]
        assert strip == [{k: v for k, v in row.items() if not k.endswith("wall_s")}
                         for row in json.loads((workflow_run / history).read_text())]


def _running_training_job(cluster: LocalSlurm) -> str | None:
    out = subprocess.run(["squeue", "--noheader", "--states=RUNNING", "--format=%i|%k"],
                         env=cluster.env(), capture_output=True, text=True, check=True).stdout
    return next((job_id for job_id, comment in (line.split("|", 1) for line in out.split())
                 if comment.startswith("rule_train_captioner")), None)


def _epochs_logged(log: Path) -> int:
    return len(re.findall(r"INFO mia\.training\.loop: epoch \d+/\d+ done", log.read_text())) \
        if log.exists() else 0


def test_scancel_mid_training_is_retried_and_resumes(slurm_run: tuple[Path, Path, str],
                                                     local_slurm: LocalSlurm) -> None:  # noqa: F811
    workdir, profile, _ = slurm_run
    longer = workdir / "longer_training.yaml"
    longer.write_text(yaml.safe_dump({"captioning": {"train": {"epochs": LONG_EPOCHS}}}))
    target = f"results/test/runs/captioning/{RUN}/s{SEED}/xe/model.pt"
    log = workdir / f"results/test/logs/train_captioner/{RUN}/s{SEED}/xe.log"
    log.unlink()  # this run's log only (the rule appends across attempts)
    configs = (*TEST_CONFIGS, longer)
    cancelled = None
    with subprocess.Popen(slurm_snakemake(profile, workdir, target, configfiles=configs),
                          env=slurm_env(local_slurm), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as proc:
        deadline = time.monotonic() + 180
        while cancelled is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.3)
            if _epochs_logged(log) >= 3:
                cancelled = _running_training_job(local_slurm)
        if cancelled is None:
            proc.kill()
            pytest.fail("the training job never reached epoch 3:\n" + proc.stdout.read()[-4000:])
        subprocess.run(["scancel", cancelled], env=local_slurm.env(), check=True)
        output, _ = proc.communicate(timeout=RUN_TIMEOUT_S + 20)
    assert proc.returncode == 0, output[-6000:] + log.read_text()[-4000:]

    # Attempt 1 caught the SIGTERM scancel sent, saved last.pt and exited 75 for the retry
    # (Snakemake prints the failed attempt's log, then clears it for the retry) ...
    preempted = re.search(r"stopped: signal 15 at epoch (\d+), batch (\d+); last.pt saved", output)
    assert preempted, output[-6000:]
    # ... and attempt 2, a new Slurm job, resumed exactly there instead of starting over.
    text = log.read_text()
    assert "attempt 2" in text, text[-3000:]
    resumed = re.search(r"resuming at epoch (\d+), batch (\d+)", text)
    assert resumed and resumed.groups() == preempted.groups(), text[-3000:]
    assert int(resumed.group(1)) > 3
    retry_ids = [slurm for _, slurm in SUBMITTED.findall(output)]
    assert len(retry_ids) == 2 and retry_ids[0] == cancelled and retry_ids[1] != cancelled
    history = json.loads((workdir / f"results/test/runs/captioning/{RUN}/s{SEED}/xe/history.json")
                         .read_text())
    assert [row["epoch"] for row in history] == list(range(1, LONG_EPOCHS + 1))
    assert os.path.getsize(workdir / target) > 0

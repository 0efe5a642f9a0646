"""``mia plan``: the GPU-hours a config will cost, per job kind, before anything runs
(:mod:`mia.plan`)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from mia.config import REPO_ROOT, load_config

log = logging.getLogger(__name__)


def _plan(args: argparse.Namespace) -> int:
    from mia.plan import format_plan, make_plan, planned_jobs, read_throughput

    paths = [REPO_ROOT / "config.yaml", *args.files]
    config = load_config(paths)
    jobs = planned_jobs(paths, args.snakemake, directory=args.directory)
    plan = make_plan(jobs, config, read_throughput(args.throughput),
                     str(args.throughput) if args.throughput else None)
    print(format_plan(plan, [str(Path(p).name) for p in paths], args.budget))
    if args.json:
        rows = [{"rule": c.job.rule, "wildcards": dict(c.job.wildcards), "kind": c.kind,
                 "flops": c.flops} for c in plan.jobs]
        Path(args.json).write_text(json.dumps({"total_hours": plan.total_hours, "kinds": [
            {"kind": k.kind, "jobs": k.jobs, "flops": k.flops, "utilisation": k.utilisation,
             "measured": k.measured, "hours": k.hours} for k in plan.kinds], "jobs": rows},
            indent=1))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    plan = subparsers.add_parser(
        "plan", help="estimated GPU-hours per job kind of every job a config plans",
        description="Ask Snakemake which jobs the config plans (snakemake -n, nothing runs) "
                    "and price each with a FLOP model at the config's sizes.")
    plan.add_argument("files", nargs="*", type=Path,
                      help="config overrides after config.yaml, e.g. config/demo.yaml")
    plan.add_argument("--throughput", type=Path, default=None,
                      help="throughput.json written by benchmarks/gpu.sh: measured shares of "
                           "the bf16 peak per job kind, in place of the assumed ones")
    plan.add_argument("--budget", type=float, default=24.0,
                      help="H100-hours above which the plan lists what would bring it down")
    plan.add_argument("--snakemake", default=None, help="the snakemake to ask (default: PATH)")
    plan.add_argument("--directory", type=Path, default=None,
                      help="the workflow's working directory: plan only what is left to run "
                           "there, with the downloads registered there (default: a scratch "
                           "directory, i.e. every job)")
    plan.add_argument("--json", type=Path, default=None, help="also write every job's FLOPs")
    plan.set_defaults(func=_plan)

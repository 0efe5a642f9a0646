"""A stand-in for a training job that survives preemption: count to N, one step at a time.

Same protocol as `mia.captioning.train`: SIGTERM or SIGUSR1 sets a flag; at the next step boundary
the state (steps done, which attempt did each step) is written atomically to `--state` and the
process exits 75 (EX_TEMPFAIL) so Snakemake retries the job. A new attempt resumes from `--state`.
The output lists, per step, the attempt that did it, so a test can see a resume (steps split over
attempts, none repeated) from a restart (steps redone).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

PREEMPTED_EXIT_CODE = 75


def write_atomic(path: Path, payload: dict) -> None:
    """Write JSON via a temporary file and rename, so a kill never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--step-seconds", type=float, required=True)
    parser.add_argument("--attempt", type=int, required=True)
    args = parser.parse_args(argv)

    stop = {"signum": None}

    def on_signal(signum: int, frame: object) -> None:
        stop["signum"] = signum

    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, on_signal)

    state = {"done_by": [], "preempted": []}
    if args.state.exists():
        state = json.loads(args.state.read_text())
    resumed_from = len(state["done_by"])
    print(f"attempt {args.attempt} job {os.environ.get('SLURM_JOB_ID')} "
          f"resuming at step {resumed_from}", flush=True)
    while len(state["done_by"]) < args.steps:
        if stop["signum"] is not None:
            state["preempted"].append({"attempt": args.attempt, "signal": stop["signum"],
                                       "at_step": len(state["done_by"])})
            write_atomic(args.state, state)
            print(f"signal {stop['signum']}: checkpointed at step {len(state['done_by'])}",
                  flush=True)
            return PREEMPTED_EXIT_CODE
        time.sleep(args.step_seconds)
        state["done_by"].append(args.attempt)
        write_atomic(args.state, state)  # also marks progress for the test's watcher
    result = dict(state, steps=args.steps, resumed_from=resumed_from,
                  slurm_job_id=os.environ.get("SLURM_JOB_ID"))
    write_atomic(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

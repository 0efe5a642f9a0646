"""Record, from inside a Slurm job, which job this is and what it was allocated.

Writes JSON: SLURM_JOB_ID, the GPU-related environment, and the `TRES=` / `TresPerJob=` /
`TresPerNode=` fields of `scontrol show job`, so a test can tell GPU and CPU allocations apart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TRES_FIELDS = ("TRES", "TresPerJob", "TresPerNode", "TresPerTask")


def scontrol_fields(job_id: str) -> dict[str, str]:
    """The TRES fields of one job, parsed from `scontrol --oneliner show job` (key=value words)."""
    text = subprocess.run(
        ["scontrol", "--oneliner", "show", "job", job_id],
        check=True, capture_output=True, text=True,
    ).stdout
    fields = {}
    for word in text.split():
        key, sep, value = word.partition("=")
        if sep and key in TRES_FIELDS:
            fields[key] = value
    return fields


def main(output: str) -> int:
    job_id = os.environ.get("SLURM_JOB_ID", "")
    info = {
        "slurm_job_id": job_id,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "scontrol": scontrol_fields(job_id) if job_id else {},
    }
    print(json.dumps(info, indent=1))
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(info, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

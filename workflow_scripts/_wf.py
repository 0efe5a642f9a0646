"""Shared start of every workflow script: import this checkout's ``mia``, log to the rule's log.

Snakemake runs each ``script:`` in a fresh Python with this folder on ``sys.path``; putting the
repository root first makes the scripts use the same ``mia`` as the Snakefile beside them, also
inside a ``--use-conda`` environment that does not install the package.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def start(smk: Any) -> logging.Logger:
    """Set up ``sys.path`` and logging; return a logger.

    Everything the job prints (log records, warnings, tracebacks, C-level stderr) goes to the
    rule's ``log`` file as well as the console (:func:`mia.runlog.setup_job_logging`).
    """
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    os.environ.setdefault("OMP_NUM_THREADS", str(getattr(smk, "threads", 1)))
    from mia.runlog import setup_job_logging

    return setup_job_logging(smk.log[0] if smk.log else None, f"workflow.{smk.rule}")


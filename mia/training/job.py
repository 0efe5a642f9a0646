"""A training job as a workflow rule runs it: prepare the run folder, train, exit the right way.

The three training rules (``train_captioner``, ``train_captioner_scst``, ``train_vqa``) call
:func:`run_training_job`, so the contract with the scheduler is written once: a stale checkpoint
folder is cleared, the attempt is counted and logged, a preempted run exits 75 for the retry (130
on Ctrl-C), and a run that went non-finite fails with its explanation as the last line of the log
instead of a traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TypeVar

from mia.training.lifecycle import Preempted, RunDirectory
from mia.training.loop import NonFiniteTraining

T = TypeVar("T")


def run_training_job(run_dir: RunDirectory, train: Callable[[], T], logger: logging.Logger,
                     what: str) -> T:
    """Prepare ``run_dir``, call ``train()``, translate stops into exit codes."""
    attempt = run_dir.prepare()
    logger.info("training %s (checkpoints in %s, attempt %d)", what, run_dir.path, attempt)
    try:
        return train()
    except Preempted as stop:
        logger.warning("stopped: %s; exiting %d so a retry resumes from last.pt", stop,
                       stop.exit_code)
        sys.exit(stop.exit_code)
    except NonFiniteTraining as err:
        logger.error("training %s failed: %s", what, err)
        sys.exit(1)

"""A training job as a workflow rule runs it: prepare the run folder, train, publish, exit the
right way.

The three training rules (``train_captioner``, ``train_captioner_scst``, ``train_vqa``) call
:func:`run_training_job`, so the contract with the scheduler is written once: a stale checkpoint
folder is cleared, the attempt is counted and logged, a preempted run exits 75 for the retry (130
on Ctrl-C), and a run that cannot go on (went non-finite, a damaged checkpoint, a full disk, a
folder it cannot write) fails with its explanation and the fix as the last line of the log
instead of a traceback.

Publishing (:func:`publish_run`) is whole or nothing: ``history.json`` is written from the
finished run's history (the one in ``last.pt``, never a half-written file), and ``model.pt`` is
copied from ``best.pt`` to a temporary, checked against the SHA-256 recorded when ``best.pt`` was
written, and only then renamed into place. A job killed at any point of it leaves no output, and
its retry publishes the same run.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from mia.io import atomic_path, write_json
from mia.training.checkpoint import CheckpointError, file_sha256
from mia.training.lifecycle import (
    Preempted,
    RunDirectory,
    RunDirectoryError,
    remove_stale_temporaries,
)
from mia.training.loop import FitResult, NonFiniteTraining

T = TypeVar("T")

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}


def disk_error_message(err: OSError) -> str | None:
    """The message for a write the disk refused (full, read-only, no permission), naming the
    file and the fix; None for other errors."""
    where = err.filename or "a file of the run"
    if err.errno in _DISK_FULL:
        return (f"{where}: the disk is full ({err.strerror}). The checkpoints written before are "
                "intact (writes are atomic): free space on that disk, then rerun; the run "
                "resumes from last.pt")
    if err.errno in _NOT_WRITABLE:
        return (f"{where}: cannot write it ({err.strerror}); make its folder writable (chmod -R "
                "u+w) or choose another results folder, then rerun; the run resumes from last.pt")
    return None


def publish_run(result: FitResult, history_out: str | os.PathLike,
                model_out: str | os.PathLike, earlier_pids: list[int] | None = None) -> None:
    """Write the rule's outputs of a finished run: ``history_out`` from ``result.history`` and
    ``model_out`` from ``result.best_path``, verified against ``result.best_sha256`` before it
    appears. Temporaries that a killed earlier attempt left beside them are deleted first."""
    history_out, model_out = Path(history_out), Path(model_out)
    for out in (history_out, model_out):
        remove_stale_temporaries(out.parent, earlier_pids or (), names=[out.name])
    write_json(history_out, result.history)
    with atomic_path(model_out) as tmp:
        shutil.copyfile(result.best_path, tmp)
        if result.best_sha256 and file_sha256(tmp) != result.best_sha256:
            raise CheckpointError(
                f"{result.best_path}: its copy to {model_out} does not match the SHA-256 recorded "
                "when it was written (the file changed during the copy, or the disk is failing); "
                "nothing was published: rerun the job")


def run_training_job(run_dir: RunDirectory, train: Callable[[], T], logger: logging.Logger,
                     what: str, publish: tuple[str, str] | None = None) -> T:
    """Prepare ``run_dir``, call ``train()``, publish its result to ``publish`` = (history,
    model) outputs when given, translate stops into exit codes and known failures into one
    error line with the fix (exit 1)."""
    try:
        attempt = run_dir.prepare()
        logger.info("training %s (checkpoints in %s, attempt %d)", what, run_dir.path, attempt)
        result = train()
        if publish is not None:
            if not isinstance(result, FitResult):
                raise TypeError("run_training_job(publish=...) needs train() to return a "
                                "FitResult")
            publish_run(result, *publish, earlier_pids=run_dir.earlier_pids())
        return result
    except Preempted as stop:
        logger.warning("stopped: %s; exiting %d so a retry resumes from last.pt", stop,
                       stop.exit_code)
        sys.exit(stop.exit_code)
    except (NonFiniteTraining, CheckpointError, RunDirectoryError) as err:
        logger.error("training %s failed: %s", what, err)
        sys.exit(1)
    except OSError as err:
        message = disk_error_message(err)
        if message is None:
            raise
        logger.error("training %s failed: %s", what, message)
        sys.exit(1)

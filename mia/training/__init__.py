"""The run lifecycle every trainer shares (XE captioning, SCST, VQA).

* :mod:`mia.training.checkpoint`: weights-only checkpoint files with their SHA-256, RNG state;
* :mod:`mia.training.lifecycle`: the checkpoint folder's fingerprint and attempts, stop signals,
  exit codes (75 preempted, 130 interrupted);
* :mod:`mia.training.loop`: :func:`fit`, the epoch/step loop with validation, selection, resume,
  checkpoints and the non-finite guard, driven by a :class:`TrainingTask`;
* :mod:`mia.training.progress`: progress lines in the log and bars on a terminal;
* :mod:`mia.training.job`: a workflow rule's job: prepare, train, publish whole or not at all,
  exit codes and one-line errors with the fix.
"""

from mia.training.checkpoint import (
    CheckpointError,
    atomic_save,
    file_sha256,
    load_checkpoint,
    save_checkpoint,
)
from mia.training.job import publish_run, run_training_job
from mia.training.lifecycle import (
    IGNORED_KEYS,
    INTERRUPTED_EXIT_CODE,
    PREEMPTED_EXIT_CODE,
    Preempted,
    RunDirectory,
    RunDirectoryError,
    StopSignals,
    fingerprint,
)
from mia.training.loop import (
    FitResult,
    LoopSettings,
    NonFiniteTraining,
    TrainingTask,
    ValidationInterrupted,
    fit,
)

__all__ = [
    "IGNORED_KEYS",
    "INTERRUPTED_EXIT_CODE",
    "PREEMPTED_EXIT_CODE",
    "CheckpointError",
    "FitResult",
    "LoopSettings",
    "NonFiniteTraining",
    "Preempted",
    "RunDirectory",
    "RunDirectoryError",
    "StopSignals",
    "TrainingTask",
    "ValidationInterrupted",
    "atomic_save",
    "file_sha256",
    "fingerprint",
    "fit",
    "load_checkpoint",
    "publish_run",
    "run_training_job",
    "save_checkpoint",
]

"""The run lifecycle every trainer shares (XE captioning, SCST, VQA).

* :mod:`mia.training.checkpoint`: weights-only checkpoint files, RNG state;
* :mod:`mia.training.lifecycle`: the checkpoint folder's fingerprint and attempts, stop signals,
  exit codes (75 preempted, 130 interrupted);
* :mod:`mia.training.loop`: :func:`fit`, the epoch/step loop with validation, selection, resume,
  checkpoints and the non-finite guard, driven by a :class:`TrainingTask`;
* :mod:`mia.training.progress`: progress lines in the log and bars on a terminal.
"""

from mia.training.checkpoint import CheckpointError, atomic_save, load_checkpoint
from mia.training.job import run_training_job
from mia.training.lifecycle import (
    INTERRUPTED_EXIT_CODE,
    PREEMPTED_EXIT_CODE,
    Preempted,
    RunDirectory,
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
    "INTERRUPTED_EXIT_CODE",
    "PREEMPTED_EXIT_CODE",
    "CheckpointError",
    "FitResult",
    "LoopSettings",
    "NonFiniteTraining",
    "Preempted",
    "RunDirectory",
    "StopSignals",
    "TrainingTask",
    "ValidationInterrupted",
    "atomic_save",
    "fingerprint",
    "fit",
    "load_checkpoint",
    "run_training_job",
]

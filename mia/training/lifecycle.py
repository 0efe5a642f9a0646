"""The life of one training run on a cluster: its checkpoint folder, its attempts, its signals.

Every training rule (cross-entropy captioning, SCST, VQA) goes through the same steps, so they
live here once:

1. :class:`RunDirectory` owns the checkpoint folder, which is NOT a rule output (Snakemake deletes
   the outputs of a failed job, and the retry must find ``last.pt``). It holds a fingerprint of
   what the run was started with (the full config and a stamp of every input file); a folder left
   by a different config or different inputs is cleared before training, so a changed config never
   resumes a stale checkpoint. It counts attempts (Snakemake's script object does not say which
   attempt it is) so the log can say "attempt 3".
2. :class:`StopSignals`: SIGTERM and SIGUSR1 (what Slurm sends before the time limit or on
   preemption) and SIGINT (Ctrl-C) only set a flag; the training loop saves ``last.pt`` at the next
   step boundary and raises :class:`Preempted`. A second Ctrl-C stops at once (the last complete
   checkpoint is still on disk, writes being atomic).
3. :func:`exit_code_for`: a preempted run exits 75 (EX_TEMPFAIL: "try again", so Snakemake's
   ``retries`` resubmits it and the new attempt resumes); an interrupted one 130, as shells do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from mia.io import write_json, write_text

log = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT


class Preempted(RuntimeError):
    """Training stopped on a signal after saving ``last.pt``; exit with :attr:`exit_code`."""

    def __init__(self, message: str, signum: int = signal.SIGTERM) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return INTERRUPTED_EXIT_CODE if self.signum == signal.SIGINT else PREEMPTED_EXIT_CODE


class StopSignals:
    """Context manager: SIGTERM/SIGUSR1/SIGINT set :attr:`signum` instead of killing the process.

    Only the main thread can install handlers; elsewhere (a test runner thread) the context is a
    no-op and the process keeps its default behaviour.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user means it
        self.signum = signum
        log.warning("received %s: saving last.pt at the next step boundary, then stopping",
                    signal.Signals(signum).name)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def file_stamp(path: str | os.PathLike) -> dict[str, Any]:
    """What identifies an input file cheaply: size and modification time (a rebuilt store has a
    new mtime; a checksum of a 50 GB feature store per attempt would cost minutes)."""
    st = os.stat(path)
    return {"size": st.st_size, "mtime": int(st.st_mtime)}


def fingerprint(config: Mapping[str, Any], inputs: Mapping[str, str | os.PathLike] | Sequence[
        str | os.PathLike]) -> dict[str, Any]:
    """The identity of a run: its full config (JSON-normalised) and a stamp per input file."""
    named = inputs if isinstance(inputs, Mapping) else {str(p): p for p in inputs}
    return {"config": json.loads(json.dumps(config, sort_keys=True, default=str)),
            "inputs": {name: {"path": str(p), **file_stamp(p)} for name, p in named.items()}}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


class RunDirectory:
    """A run's checkpoint folder with its fingerprint and attempt counter."""

    FINGERPRINT = "fingerprint.json"
    ATTEMPTS = "attempts"

    def __init__(self, path: str | os.PathLike, stamp: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.stamp = dict(stamp)
        self.attempt = 0

    def _stored_stamp(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.path / self.FINGERPRINT).read_text())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None

    def changes(self) -> list[str]:
        """What differs between the folder's fingerprint and this run's (empty: resumable)."""
        stored = self._stored_stamp()
        if stored is None:
            return ["no readable fingerprint.json"]
        diffs = []
        for section in ("config", "inputs"):
            old, new = stored.get(section, {}), self.stamp.get(section, {})
            if _digest(old) != _digest(new):
                keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                diffs.append(f"{section}: {', '.join(keys[:5]) or 'changed'}")
        return diffs

    def prepare(self) -> int:
        """Clear a stale folder, write the fingerprint, count this attempt; return its number."""
        if self.path.exists() and any(self.path.iterdir()):
            diffs = self.changes()
            if diffs:
                log.warning("%s: config or inputs changed since these checkpoints (%s); "
                            "starting over", self.path, "; ".join(diffs))
                shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.path / self.FINGERPRINT, self.stamp, sort_keys=True)
        counter = self.path / self.ATTEMPTS
        try:
            previous = int(counter.read_text())
        except (FileNotFoundError, ValueError):
            previous = 0
        self.attempt = previous + 1
        write_text(counter, str(self.attempt))
        return self.attempt

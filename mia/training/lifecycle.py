"""The life of one training run on a cluster: its checkpoint folder, its attempts, its signals.

Every training rule (cross-entropy captioning, SCST, VQA) goes through the same steps, so they
live here once:

1. :class:`RunDirectory` owns the checkpoint folder, which is NOT a rule output (Snakemake deletes
   the outputs of a failed job, and the retry must find ``last.pt``). It holds a fingerprint of
   what the run was started with (the config, less the :data:`IGNORED_KEYS` that cannot change
   the result, and a stamp of every input file: its SHA-256 up to 1 GiB, else size and mtime); a
   folder left by a different config or different inputs is cleared before training, so a
   changed config never resumes a stale checkpoint, while a changed ``log_every`` resumes. It
   counts attempts (Snakemake's script object does not say which attempt it is) so the log can
   say "attempt 3", records their pids, and deletes the temporaries a killed attempt left.
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
import re
import shutil
import signal
import socket
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from mia.io import write_json, write_text
from mia.training.checkpoint import file_sha256

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


#: Keys of a trainer's config that cannot change the trained weights or which epoch is selected,
#: with why. The fingerprint leaves them out (at any depth of the config: ``captioner.cnn.workers``
#: too), so changing one between attempts resumes the run instead of discarding its checkpoints.
#: EVERY OTHER KEY COUNTS: a key added later (a precision, a clamp) restarts a changed run until it
#: is listed here with a reason.
IGNORED_KEYS: dict[str, str] = {
    "log_every": "how often a progress line is logged",
    "progress": "whether a progress bar is drawn",
    "checkpoint_every": "how often last.pt is written (a resume is exact from any step)",
    "max_nonfinite_steps": "how many non-finite steps are skipped before the run fails (a run "
                           "that finishes skipped the same steps either way)",
    "device": "where the arithmetic runs (a run moved between GPU and CPU continues the same "
              "training; the last digits of the numbers differ, as between two GPUs, and SCST's "
              "sampler is re-seeded, a CUDA generator's state not fitting a CPU one)",
    "val_batch_size": "how many val images are decoded at once (the same captions and answers; "
                      "only the rounding of batched matrix products can differ)",
    "prefetch_batches": "how many training batches a thread gathers ahead (the same batches)",
    "workers": "DataLoader processes decoding images (crops and flips are drawn from (seed, "
               "epoch, batch, position), not from the worker)",
}

#: Inputs up to this size are stamped by their content (SHA-256; the XE model, the document
#: frequencies, the caption and VQA stores, GloVe), larger ones (the feature stores, 18-25 GB) by
#: size and modification time, which the log says.
DIGEST_MAX_BYTES = 1 << 30


def split_ignored(config: Any, ignored: Iterable[str] = IGNORED_KEYS, prefix: str = ""
                  ) -> tuple[Any, dict[str, Any]]:
    """``config`` without the ``ignored`` keys (at any depth), and those keys as
    ``{dotted path: value}``."""
    if not isinstance(config, Mapping):
        return config, {}
    names = set(ignored)
    kept: dict[str, Any] = {}
    dropped: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if key in names:
            dropped[path] = value
            continue
        kept[key], inner = split_ignored(value, names, f"{path}.")
        dropped.update(inner)
    return kept, dropped


def file_stamp(path: str | os.PathLike, digest_max_bytes: int = DIGEST_MAX_BYTES
               ) -> dict[str, Any]:
    """What identifies an input file: its SHA-256 when it is at most ``digest_max_bytes`` (a
    swapped file of the same size and time is noticed), else size and modification time in
    nanoseconds (a rebuilt store has a new mtime; reading a 25 GB store per attempt would cost
    minutes)."""
    st = os.stat(path)
    if st.st_size <= digest_max_bytes:
        return {"size": st.st_size, "sha256": file_sha256(path)}
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def fingerprint(config: Mapping[str, Any], inputs: Mapping[str, str | os.PathLike] | Sequence[
        str | os.PathLike], digest_max_bytes: int = DIGEST_MAX_BYTES) -> dict[str, Any]:
    """The identity of a run: its config without :data:`IGNORED_KEYS` (JSON-normalised) and a
    stamp per input file (:func:`file_stamp`). ``ignored`` records the left-out keys' values (for
    the log; never compared)."""
    named = inputs if isinstance(inputs, Mapping) else {str(p): p for p in inputs}
    plain = json.loads(json.dumps(config, sort_keys=True, default=str))
    kept, ignored = split_ignored(plain)
    return {"config": kept, "ignored": ignored,
            "inputs": {name: {"path": str(p), **file_stamp(p, digest_max_bytes)}
                       for name, p in named.items()}}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths whose values differ between two JSON values."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".") or "changed"]


class RunDirectoryError(ValueError):
    """The checkpoint folder cannot be used as it is; the message says what to do."""


_TEMPORARY = re.compile(r"^(?P<name>.+)\.tmp-(?P<pid>\d+)$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def remove_stale_temporaries(folder: str | os.PathLike, earlier_pids: Iterable[int] = (),
                             names: Iterable[str] | None = None) -> list[Path]:
    """Delete the ``<name>.tmp-<pid>`` files a killed writer left in ``folder`` (a SIGKILL during
    a checkpoint save leaves one of hundreds of MB), only of ``names`` when given.

    Called at the start of an attempt, before it writes anything: a temporary is stale when its
    pid is this process's (an earlier process had the same pid), no live process here, or one of
    ``earlier_pids`` (the run's earlier attempts, possibly on another node). Anything else may be
    a live writer and is left alone with a warning. Returns the files deleted.
    """
    folder = Path(folder)
    wanted = None if names is None else set(names)
    earlier = set(earlier_pids)
    removed = []
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if not match or (wanted is not None and match["name"] not in wanted):
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or pid in earlier or not _pid_alive(pid):
            try:
                size = entry.stat().st_size
                entry.unlink()
            except FileNotFoundError:
                continue
            log.info("%s: deleted the temporary file of an interrupted write (%d MB; process "
                     "%d is gone)", entry, size // 2**20, pid)
            removed.append(entry)
        else:
            log.warning("%s: left alone: process %d, which may be writing it, is alive; delete "
                        "it by hand if no job of this run is running", entry, pid)
    return removed


class RunDirectory:
    """A run's checkpoint folder with its fingerprint and attempt counter."""

    FINGERPRINT = "fingerprint.json"
    ATTEMPTS = "attempts"
    ATTEMPT_LOG = "attempts.json"  # [{"attempt", "pid", "host"}, ...]

    def __init__(self, path: str | os.PathLike, stamp: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.stamp = dict(stamp)
        self.attempt = 0

    def _stored_stamp(self) -> tuple[dict[str, Any] | None, str]:
        where = self.path / self.FINGERPRINT
        try:
            stored = json.loads(where.read_text())
        except FileNotFoundError:
            return None, "no readable fingerprint.json"
        except IsADirectoryError:
            return None, "no readable fingerprint.json (it is a folder)"
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return None, "no readable fingerprint.json"
        if not isinstance(stored, dict):
            return None, "no readable fingerprint.json"
        return stored, ""

    def changes(self) -> list[str]:
        """What differs between the folder's fingerprint and this run's (empty: resumable).
        :data:`IGNORED_KEYS` are left out of both sides (also of a fingerprint written before
        they were)."""
        stored, why = self._stored_stamp()
        if stored is None:
            return [why]
        diffs = []
        for section in ("config", "inputs"):
            old, new = stored.get(section, {}), self.stamp.get(section, {})
            if section == "config":
                old, new = split_ignored(old)[0], split_ignored(new)[0]
            if _digest(old) != _digest(new):
                keys = _changed_keys(old, new) if section == "config" else sorted(
                    k for k in set(old) | set(new) if old.get(k) != new.get(k))
                diffs.append(f"{section}: {', '.join(keys[:5]) or 'changed'}")
        return diffs

    def _ignored_changes(self) -> list[str]:
        stored, _ = self._stored_stamp()
        if stored is None:
            return []
        old = stored.get("ignored")
        if old is None:
            old = split_ignored(stored.get("config", {}))[1]
        new = self.stamp.get("ignored", {})
        return [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                if old.get(k) != new.get(k)]

    def _attempt_records(self) -> list[dict[str, Any]]:
        try:
            records = json.loads((self.path / self.ATTEMPT_LOG).read_text())
            return [r for r in records if isinstance(r, dict) and isinstance(r.get("pid"), int)]
        except (OSError, ValueError, TypeError):
            return []

    def prepare(self) -> int:
        """Clear a stale folder, write the fingerprint, count this attempt; return its number.

        A file where the folder belongs, or a folder that cannot be written, raises
        :class:`RunDirectoryError` saying what to do; temporaries left by a killed earlier
        attempt are deleted (:func:`remove_stale_temporaries`).
        """
        if self.path.exists() and not self.path.is_dir():
            raise RunDirectoryError(
                f"{self.path}: this run's checkpoint folder is a file; move it away or delete it "
                "(rm), then rerun")
        try:
            return self._prepare()
        except PermissionError as err:
            raise RunDirectoryError(
                f"{err.filename or self.path}: cannot write the run's checkpoint folder "
                f"({err.strerror}); make the results folder writable (chmod -R u+w) or run "
                "elsewhere, then rerun") from err

    def _prepare(self) -> int:
        ignored = self.stamp.get("ignored", {})
        if ignored:
            log.info("the fingerprint of this run leaves out %s: they cannot change the trained "
                     "weights, so changing them resumes the run (mia.training.IGNORED_KEYS)",
                     ", ".join(sorted(ignored)))
        assumed = [f"{name} ({stamp['size'] / 2**30:.1f} GB)"
                   for name, stamp in self.stamp.get("inputs", {}).items()
                   if "sha256" not in stamp]
        if assumed:
            log.info("inputs stamped by size and modification time, not read (larger than %d "
                     "MB): %s; a file replaced by another of the same size and time would not be "
                     "noticed", DIGEST_MAX_BYTES // 2**20, ", ".join(assumed))
        earlier: list[dict[str, Any]] = []
        if self.path.exists() and any(self.path.iterdir()):
            diffs = self.changes()
            if diffs:
                log.warning("%s: config or inputs changed since these checkpoints (%s); "
                            "starting over", self.path, "; ".join(diffs))
                shutil.rmtree(self.path)
            else:
                cosmetic = self._ignored_changes()
                if cosmetic:
                    log.info("%s: only keys that cannot change the result changed (%s): "
                             "resuming", self.path, "; ".join(cosmetic))
                earlier = self._attempt_records()
                remove_stale_temporaries(self.path, [r["pid"] for r in earlier])
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.path / self.FINGERPRINT, self.stamp, sort_keys=True)
        counter = self.path / self.ATTEMPTS
        try:
            previous = int(counter.read_text())
        except (FileNotFoundError, ValueError):
            previous = 0
        self.attempt = previous + 1
        write_text(counter, str(self.attempt))
        record = {"attempt": self.attempt, "pid": os.getpid(), "host": socket.gethostname()}
        write_json(self.path / self.ATTEMPT_LOG, [*earlier, record])
        return self.attempt

    def earlier_pids(self) -> list[int]:
        """The pids of this run's attempts before the current one (for
        :func:`remove_stale_temporaries` beside the outputs)."""
        return [r["pid"] for r in self._attempt_records()[:-1]]

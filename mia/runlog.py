"""Logging for a workflow job: everything it says, and every way it fails, lands in the rule's log.

On a cluster the rule's ``log:`` file is the one place people look. A Python traceback, a
``warnings.warn`` from a library, or an HDF5 error printed by C code all go to standard error,
which Snakemake does not copy into ``{log}``. :func:`setup_job_logging` therefore

* sends ``logging`` records to the log file (and to the console),
* routes ``warnings`` through ``logging``,
* duplicates file descriptor 2 through a pipe into both the log file and the original console
  (a "tee"), so tracebacks of uncaught exceptions and messages of C extensions are in the log too,
* remembers whether the job runs in a terminal (:func:`console`), so progress bars are drawn only
  for a person watching, on the terminal, and never into the log file.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import logging
import os
import sys
import threading
from pathlib import Path
from typing import TextIO

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_console: TextIO | None = None
_tee: _StderrTee | None = None


class _StderrTee:
    """fd 2 -> pipe -> (original stderr, log file), copied by a daemon thread."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        sys.stderr.flush()
        self.console_fd = os.dup(2)
        self.log_file = open(log_path, "ab", buffering=0)  # noqa: SIM115 (closed in stop)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self.read_fd = read_fd
        self.thread = threading.Thread(target=self._copy, name="stderr-tee", daemon=True)
        self.thread.start()

    def _copy(self) -> None:
        while chunk := os.read(self.read_fd, 65536):
            os.write(self.console_fd, chunk)
            self.log_file.write(chunk)

    def stop(self) -> None:
        """Restore fd 2 and drain the pipe (called at exit, so the last traceback is kept)."""
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(self.console_fd, 2)  # closes the pipe's last write end: the thread sees EOF
        self.thread.join(timeout=5)
        os.close(self.read_fd)
        self.log_file.close()


def stop_job_logging() -> None:
    """Undo the stderr tee (at exit automatically; tests that run several jobs in one process
    call it between them)."""
    global _tee, _console
    if _tee is not None:
        _tee.stop()
        _tee = None
    _console = None


def console() -> TextIO | None:
    """A text stream to the terminal the job was started from, or None when nobody watches
    (batch jobs, Snakemake without a terminal): where progress bars may be drawn."""
    return _console


def setup_job_logging(log_path: str | os.PathLike | None, name: str,
                      level: int = logging.INFO) -> logging.Logger:
    """Configure this process to log into ``log_path`` (appending) and return a named logger."""
    global _console, _tee
    interactive = sys.stderr.isatty()
    handlers: list[logging.Handler] = []
    if log_path:
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if _tee is not None and _tee.log_path != log_path:
            stop_job_logging()
        if _tee is None:
            _tee = _StderrTee(log_path)
            # sys.stderr writes to fd 2, now the pipe: one handler on it reaches both the
            # console and the file, and so does everything else written to stderr.
        if interactive:
            _console = io.TextIOWrapper(os.fdopen(os.dup(_tee.console_fd), "wb", buffering=0),
                                        write_through=True)
    elif interactive:
        _console = sys.stderr
    # Records go to file descriptor 2 itself (the tee when there is a log file), not to whatever
    # object ``sys.stderr`` happens to be (a test runner replaces it).
    stream: TextIO = (open(2, "w", buffering=1, closefd=False, encoding="utf-8",  # noqa: SIM115
                           errors="backslashreplace") if log_path else sys.stderr)
    handlers.append(logging.StreamHandler(stream))
    atexit.unregister(stop_job_logging)
    atexit.register(stop_job_logging)
    logging.basicConfig(level=level, handlers=handlers, force=True, format=_FORMAT)
    logging.captureWarnings(True)
    return logging.getLogger(name)

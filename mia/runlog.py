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

Log records go to the log file and to the console directly (not through the stderr pipe), the
console's through ``tqdm.write``: a progress bar on the same terminal is cleared, the line
printed, the bar redrawn, instead of both tearing each other (a line after a bar lost its first
character). The pipe still carries everything else written to standard error.
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
_console: TextIO | None = None  # the terminal, when a person watches
_console_stream: TextIO | None = None  # the job's original stderr, terminal or not
_tee: _StderrTee | None = None


class TqdmConsoleHandler(logging.StreamHandler):
    """Log records on a console that progress bars share: written with ``tqdm.write``, which
    clears the bars on that stream, prints the line and redraws them."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 (logging's own contract: report, never raise)
            self.handleError(record)


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
    global _tee, _console, _console_stream
    for handler in list(logging.getLogger().handlers):
        if isinstance(handler, logging.FileHandler | TqdmConsoleHandler):
            logging.getLogger().removeHandler(handler)
            handler.close()
    if _tee is not None:
        _tee.stop()
        _tee = None
    _console = _console_stream = None


def console(force: bool = False) -> TextIO | None:
    """A text stream to the terminal the job was started from, or None when nobody watches
    (batch jobs, Snakemake without a terminal): where progress bars may be drawn. ``force``:
    the job's console even when it is no terminal (``progress: true``), never the log file."""
    if _console is not None or not force:
        return _console
    return _console_stream if _console_stream is not None else sys.stderr


def logging_to_file() -> bool:
    """Whether this process logs into a rule's log file (:func:`setup_job_logging`)."""
    return _tee is not None


def setup_job_logging(log_path: str | os.PathLike | None, name: str,
                      level: int = logging.INFO) -> logging.Logger:
    """Configure this process to log into ``log_path`` (appending) and return a named logger."""
    global _console, _console_stream, _tee
    interactive = sys.stderr.isatty()
    handlers: list[logging.Handler] = []
    if log_path:
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if _tee is not None and _tee.log_path != log_path:
            stop_job_logging()
        if _tee is None:
            _tee = _StderrTee(log_path)
        interactive = os.isatty(_tee.console_fd)  # fd 2 itself is the pipe now
        if _console_stream is not None:
            _console_stream.close()
        # The job's original stderr (terminal or Snakemake's console), beside the pipe: records
        # and bars share it through tqdm.write; the pipe carries everything else.
        _console_stream = io.TextIOWrapper(
            os.fdopen(os.dup(_tee.console_fd), "wb", buffering=0), write_through=True,
            encoding="utf-8", errors="backslashreplace")
        _console = _console_stream if interactive else None
        handlers.append(logging.FileHandler(log_path, mode="a", encoding="utf-8"))
        handlers.append(TqdmConsoleHandler(_console_stream))
    else:
        if interactive:
            _console = sys.stderr
        handlers.append(logging.StreamHandler(sys.stderr))
    atexit.unregister(stop_job_logging)
    atexit.register(stop_job_logging)
    logging.basicConfig(level=level, handlers=handlers, force=True, format=_FORMAT)
    logging.captureWarnings(True)
    return logging.getLogger(name)

"""Progress of a long loop (images through a backbone, captions decoded, bytes downloaded): lines
in the job's log for whoever reads it later, and a bar for whoever watches now.

A ResNet pass over 123k images runs for hours on a cluster node: its rule log must say how far it
is, how fast it goes and when it will end, whatever the terminal. So :class:`Progress` logs a
line (items done of total, rate, elapsed, ETA) every ``every_s`` seconds and when the loop ends,
ALWAYS. The config's ``progress`` setting governs only the interactive bar:

* ``False``: no bar;
* ``"auto"``: a bar when a person watches (stderr is a terminal);
* ``True``: a bar on the job's console even without a terminal (never into the rule's log file).

Bars and log lines share the terminal without tearing each other: inside a workflow job the
console handler of :mod:`mia.runlog` writes through ``tqdm.write``; in a plain command
(``mia features grid``) the logging handlers on stderr are swapped for tqdm-aware ones with
``tqdm.contrib.logging.logging_redirect_tqdm`` while the bar lives.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from mia import runlog

T = TypeVar("T")

#: Seconds between progress lines in the log (the first after this long, then regularly).
DEFAULT_EVERY_S = 30.0


def format_duration(seconds: float) -> str:
    """``1h02m``, ``3m07s``: durations in log lines."""
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def bar_stream(setting: bool | str) -> TextIO | None:
    """Where a progress bar may be drawn for the config's ``progress`` setting (see the module
    docstring), or ``None`` for no bar. Never the rule's log file."""
    if setting is False or setting in ("false", "False"):
        return None
    watching = runlog.console()
    if watching is not None:
        return watching
    if setting is True:
        return runlog.console(force=True)
    if runlog.logging_to_file():  # "auto" inside a batch job: nobody watches
        return None
    return sys.stderr if sys.stderr.isatty() else None


class Bar:
    """A tqdm bar where :func:`bar_stream` allows one (else nothing), with the log handlers of a
    plain command redirected through ``tqdm.write`` while it lives."""

    def __init__(self, setting: bool | str, total: int | None, initial: int = 0, desc: str = "",
                 unit: str = "it") -> None:
        self._stack = contextlib.ExitStack()
        self.tqdm = None
        stream = bar_stream(setting)
        if stream is not None:
            if stream is sys.stderr:  # a plain command: logging on stderr must not tear the bar
                self._stack.enter_context(logging_redirect_tqdm())
            self.tqdm = tqdm(total=total, initial=initial, file=stream, desc=desc, unit=unit,
                             leave=False, dynamic_ncols=True)

    def update(self, n: int = 1, **postfix: Any) -> None:
        if self.tqdm is not None:
            self.tqdm.update(n)
            if postfix:
                self.tqdm.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()
            self.tqdm = None
        self._stack.close()


class Progress:
    """``total`` items of work (``None``: unknown), a log line every ``every_s`` seconds and at
    the end, a bar as :func:`bar_stream` allows."""

    def __init__(self, what: str, total: int | None, *, unit: str = "items",
                 logger: logging.Logger | None = None, bar: bool | str = "auto",
                 every_s: float | None = None, start: int = 0, scale: float = 1.0) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.scale = scale  # counts are raw units (bytes); lines show count / scale (MB)
        self.logger = logger or logging.getLogger("mia.progress")
        self.every_s = DEFAULT_EVERY_S if every_s is None else every_s
        self.done = start
        self._start = start
        self._t0 = self._last = time.monotonic()
        self._bar = Bar(bar, total, start, what, f" {unit}" if scale == 1.0 else "B")
        self.logger.info("%s: %s %s to do", what, "?" if total is None else
                         self._amount(total - start), unit)

    def _amount(self, count: float) -> str:
        return f"{count:,.0f}" if self.scale == 1.0 else f"{count / self.scale:,.1f}"

    def rate(self) -> float:
        """Units per second (scaled) since the start."""
        return (self.done - self._start) / self.scale / max(time.monotonic() - self._t0, 1e-9)

    def line(self) -> str:
        """``1,204 of 5,000 images (24%), 38.2 images/s, elapsed 0m31s, ETA 1m39s``."""
        elapsed = time.monotonic() - self._t0
        rate = self.rate()
        text = self._amount(self.done)
        if self.total:
            text += (f" of {self._amount(self.total)} {self.unit} "
                     f"({100 * self.done / self.total:.0f}%)")
        else:
            text += f" {self.unit}"
        text += f", {rate:.1f} {self.unit}/s, elapsed {format_duration(elapsed)}"
        if self.total and rate > 0:
            text += f", ETA {format_duration((self.total - self.done) / self.scale / rate)}"
        return text

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.done += n
        self._bar.update(n, **postfix)
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self.logger.info("%s: %s", self.what, self.line())

    def close(self) -> None:
        self._bar.close()
        elapsed = time.monotonic() - self._t0
        self.logger.info("%s: done, %s %s in %s (%.1f %s/s)", self.what,
                         self._amount(self.done), self.unit, format_duration(elapsed), self.rate(),
                         self.unit)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:  # the loop failed: no "done" line, but give the terminal back
            self._bar.close()


def track(items: Iterable[T], what: str, total: int | None = None, *, unit: str = "items",
          size: Any = None, logger: logging.Logger | None = None, bar: bool | str = "auto",
          every_s: float | None = None) -> Iterator[T]:
    """Iterate ``items`` with :class:`Progress`; ``size(item)`` is how many units an item is
    (a batch of images: its length; default 1 each)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(what, total, unit=unit, logger=logger, bar=bar, every_s=every_s) as progress:
        for item in items:
            yield item
            progress.update(size(item) if size is not None else 1)

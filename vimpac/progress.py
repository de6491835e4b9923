"""Progress output of long commands: a tqdm bar in a terminal, whole lines in a log file.

A tqdm bar redraws itself with carriage returns; written to a file (a cluster job's log, or
`> log 2>&1`) that is one endless line. Where the stream is not a terminal, `progress_bar` returns
a `LineProgress` instead: the same `update` / `set_postfix` / `close` interface, printing a
one-line report now and then (every 1% of the work, at most every 10 s, and at least every 5 min
while work gets done; a `set_postfix` then `update(0)` counts as work, for a postfix that shows
progress inside one unit, as tokenize's frames of a long video). The trainer has its own
reports (with the run's name), on the same terminal test.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable, Iterable, Iterator, TextIO

__all__ = ["LOG_FILE_REPORTS", "LineProgress", "NoProgress", "is_terminal", "progress_bar", "track"]

LOG_FILE_REPORTS = 100  # one-line reports over a run whose stream is not a terminal: one per 1%
MIN_REPORT_SECONDS = 10.0  # ... but a short run's reports not closer together than this
MAX_QUIET_SECONDS = 300.0  # ... and a slow one's not further apart than this


def is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(total: int | None, desc: str, unit: str = "it", *, enabled: bool = True, initial: int = 0,
                 stream: TextIO | None = None, leave: bool = True):
    """A progress display on `stream` (default: sys.stderr) for `total` units: a tqdm bar on a
    terminal, a `LineProgress` elsewhere, a `NoProgress` when not `enabled` (--no-progress)."""
    stream = sys.stderr if stream is None else stream
    if not enabled:
        return NoProgress()
    if is_terminal(stream):
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=stream, dynamic_ncols=True,
                    leave=leave)
    return LineProgress(total, desc, unit, initial=initial, stream=stream)


def track(iterable: Iterable[Any], bar: Any) -> Iterator[Any]:
    """The items of `iterable`, each counted on `bar` once the caller asks for the next (as a
    tqdm bar wrapping the iterable counts them)."""
    for item in iterable:
        yield item
        bar.update(1)


class NoProgress:
    """Shows nothing (--no-progress)."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "NoProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class LineProgress(NoProgress):
    """tqdm's `update` / `set_postfix` / `close`, reported as whole lines, e.g.
    `tokenize r0: 37/120 video (30%), 2.41 video/s, ~34 s left; frames_s 96.4, failed 0`.

    At most `reports` lines for the percentages, plus one per `max_quiet` seconds of a slow run
    (also while only the postfix changes, given `update(0)`), plus the last count at `close`
    (where an interrupted run stopped)."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", *, initial: int = 0,
                 stream: TextIO | None = None, reports: int = LOG_FILE_REPORTS,
                 min_seconds: float = MIN_REPORT_SECONDS, max_quiet: float = MAX_QUIET_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self.total = total or 0
        self.desc, self.unit = desc, unit
        self.n = self._first = self._reported = initial
        self._stream = stream
        self._clock = clock
        self._min_seconds, self._max_quiet = min_seconds, max_quiet
        self._started = self._last_line = clock()
        self._every = max(1, math.ceil(self.total / reports)) if self.total else 0
        self._next = (initial // self._every + 1) * self._every if self._every else 0
        self._postfix: dict[str, Any] = {}
        self._reported_postfix: dict[str, Any] = {}
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._closed or not self.total:
            return
        now = self._clock()
        crossed = self.n >= self._next
        if crossed:
            self._next = (self.n // self._every + 1) * self._every
        if self.n >= self.total or (crossed and now - self._last_line >= self._min_seconds) \
                or now - self._last_line >= self._max_quiet:
            self._report(now)

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self._postfix = {**(ordered_dict or {}), **kwargs}

    def close(self) -> None:
        if not self._closed and self.total and self.n != self._reported:
            self._report(self._clock())
        self._closed = True

    def _report(self, now: float) -> None:
        if self.n == self._reported and self._postfix == self._reported_postfix:
            return
        seconds = now - self._started
        rate = (self.n - self._first) / seconds if seconds > 0 else 0.0
        line = f"{self.desc}: {self.n}/{self.total} {self.unit} ({100 * self.n // self.total}%)"
        if rate > 0:
            line += f", {rate:.3g} {self.unit}/s"
            if self.n < self.total:
                left = (self.total - self.n) / rate
                line += f", ~{left:.0f} s left" if left < 90 else f", ~{left / 60:.1f} min left"
        if self._postfix:
            line += "; " + ", ".join(f"{key} {value}" for key, value in self._postfix.items())
        stream = sys.stderr if self._stream is None else self._stream
        print(line, file=stream, flush=True)
        self._reported, self._reported_postfix, self._last_line = self.n, self._postfix, now

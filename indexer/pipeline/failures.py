"""Failures of ``process_checkpoint``: where each was raised, and the checkpoints failing now.

A ``Failure`` is an exception's type and message and the line that raised it, in the user's
code when the traceback reaches it: the same ``Failure`` on several checkpoints is the same
error at the same place, which is how the processor tells a bug from an outage
(``RetryPolicy.bug_errors``). ``FailingCheckpoints`` holds the checkpoints of a run that are
failing now; the lowest one holds the watermark back (``StallReporter`` reports it). Nothing
here runs unless a checkpoint fails.
"""

from __future__ import annotations

import os
import sysconfig
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

__all__ = ["Failing", "FailingCheckpoints", "Failure", "failure_of"]

#: A traceback of the same failure is logged at most this often (seconds).
TRACEBACK_EVERY = 60.0

_FRAMEWORK = str(Path(__file__).resolve().parent.parent) + os.sep


@lru_cache(maxsize=1)
def _libraries() -> tuple[str, ...]:
    """The standard library's and installed packages' directories (read at the first failure,
    not at start-up)."""
    return tuple(
        {
            os.path.realpath(path) + os.sep
            for key in ("stdlib", "platstdlib", "purelib", "platlib")
            if (path := sysconfig.get_paths().get(key))
        }
    )


class Failure(NamedTuple):
    """What a failure is, to tell one from another: the exception's type and message, and the
    ``file:line`` (and function) that raised it."""

    kind: str
    message: str
    location: str
    function: str


def failure_of(exc: BaseException) -> Failure:
    """``exc``'s ``Failure``: located at the innermost frame of its traceback in the user's
    code (outside the framework, the standard library and installed packages), else at its
    innermost frame."""
    innermost = chosen = None
    tb = exc.__traceback__
    while tb is not None:
        innermost = tb
        if _is_user_code(tb.tb_frame.f_code.co_filename):
            chosen = tb
        tb = tb.tb_next
    chosen = chosen or innermost
    kind = type(exc).__qualname__
    if chosen is None:  # raised and caught without a traceback: nowhere to name
        return Failure(kind, str(exc), "?", "?")
    code = chosen.tb_frame.f_code
    return Failure(kind, str(exc), f"{_shown(code.co_filename)}:{chosen.tb_lineno}", code.co_name)


@lru_cache(maxsize=256)
def _is_user_code(filename: str) -> bool:
    if filename.startswith("<"):  # <frozen ...>, <string>
        return False
    path = os.path.realpath(filename)
    return not path.startswith(_FRAMEWORK) and not path.startswith(_libraries())


def _shown(filename: str) -> str:
    """A file's path as an error names it: relative to the working directory when inside."""
    path = os.path.abspath(filename)
    here = os.getcwd() + os.sep
    return path[len(here) :] if path.startswith(here) else path


class Failing:
    """One checkpoint failing now: its attempts so far, its last error, since when."""

    __slots__ = ("attempts", "error", "failure", "since")

    def __init__(self, attempts: int, error: str, failure: Failure, since: float) -> None:
        self.attempts = attempts
        self.error = error
        self.failure = failure
        self.since = since


class FailingCheckpoints:
    """The checkpoints of a run that are failing now, by sequence number.

    The processor adds a checkpoint on each failure and removes it once it succeeds, is
    dead-lettered or rescheduled by a ``Retry``; ``on_change`` is called after each change.
    """

    def __init__(self) -> None:
        self._failing: dict[int, Failing] = {}
        self._tracebacks: dict[Failure, float] = {}
        self.on_change: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self._failing)

    def failed(self, sequence_number: int, attempts: int, exc: BaseException) -> Failure:
        """Record the ``attempts``-th failure of a checkpoint with ``exc``; its ``Failure``."""
        failure = failure_of(exc)
        known = self._failing.get(sequence_number)
        since = known.since if known is not None else time.time()
        self._failing[sequence_number] = Failing(attempts, repr(exc), failure, since)
        self._changed()
        return failure

    def recovered(self, sequence_number: int) -> None:
        """The checkpoint is no longer failing (done, dead-lettered or rescheduled)."""
        if self._failing.pop(sequence_number, None) is not None:
            self._changed()

    def lowest(self) -> tuple[int, Failing] | None:
        """The lowest checkpoint failing now, which holds the watermark back; None if none."""
        if not self._failing:
            return None
        sequence_number = min(self._failing)
        return sequence_number, self._failing[sequence_number]

    def repeating(self, failure: Failure, attempts: int) -> list[int]:
        """The checkpoints whose last failure is ``failure`` after at least ``attempts``
        attempts, in order."""
        return sorted(
            n for n, f in self._failing.items() if f.failure == failure and f.attempts >= attempts
        )

    def traceback_due(self, failure: Failure) -> bool:
        """True when ``failure``'s traceback has not been logged in the last
        ``TRACEBACK_EVERY`` seconds (and counts it logged now): a bug hitting every checkpoint
        shows its traceback once, not once per checkpoint."""
        now = time.monotonic()
        logged = self._tracebacks.get(failure)
        if logged is not None and now - logged < TRACEBACK_EVERY:
            return False
        if len(self._tracebacks) >= 256:  # failures whose message varies: keep it bounded
            self._tracebacks.clear()
        self._tracebacks[failure] = now
        return True

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

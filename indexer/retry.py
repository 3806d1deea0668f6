"""Retrying: the policy (exponential backoff with jitter, bounded or unlimited attempts) and the
one helper every layer that retries an operation uses.

Each operation is retried by one layer only: a commit and a watermark save by the pipeline's
committer, a dead letter by the processor, a lease by the chunked runner's heartbeat, the
switch to WAL by the SQLite connection. The stores themselves never retry.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

import msgspec

from ._log import log
from .errors import ConfigurationError, IndexerError

__all__ = [
    "STORE_WRITE_RETRY",
    "RetryAbandoned",
    "RetryPolicy",
    "logged_retry",
    "retry",
    "sleep_unless_set",
]

T = TypeVar("T")


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How failed ``process_checkpoint`` calls and failed commits are retried.

    The n-th retry waits ``min(max_delay, initial * multiplier ** (n - 1))`` seconds, scaled by a
    random factor in ``[1 - jitter, 1 + jitter]`` (and still capped at ``max_delay``).
    ``max_attempts=None`` retries forever. When attempts run out, ``on_exhausted="halt"`` stops the
    pipeline with an error naming the checkpoint; ``"skip"`` dead-letters it and goes on.
    A pipeline's ``[pipelines.NAME.retry]`` table is this struct, key for key.

    A bug is not retried forever: when ``bug_checkpoints`` checkpoints (or ``concurrency`` of
    them, if fewer) have each failed ``bug_attempts`` times with the same exception (type and
    message) raised at the same line, and its type is one ``bug_errors`` names (or a subclass),
    ``process_checkpoint`` failures halt the pipeline whatever ``max_attempts`` and
    ``on_exhausted`` say: retrying cannot fix a typo, and skipping would dead-letter every
    checkpoint. The types are those of errors in code, which an outage does not raise
    (connection errors and timeouts are ``OSError``s); ``bug_errors = []`` turns this off, and
    ``KeyError`` or ``ValueError`` may be added where they mean a bug.
    """

    initial: float = 0.1
    multiplier: float = 2.0
    max_delay: float = 30.0
    max_attempts: int | None = None
    jitter: float = 0.2
    on_exhausted: Literal["halt", "skip"] = "halt"
    bug_errors: tuple[str, ...] = (
        "AttributeError",
        "NameError",
        "TypeError",
        "ImportError",
        "SyntaxError",
        "NotImplementedError",
    )
    bug_checkpoints: int = 3
    bug_attempts: int = 5

    def __post_init__(self) -> None:
        def bad(key: str, rule: str) -> ConfigurationError:
            return ConfigurationError(rule, key=key, where="retry")

        if self.initial < 0:
            raise bad("initial", f"must be >= 0, got {self.initial}")
        if self.multiplier < 1:
            raise bad("multiplier", f"must be >= 1, got {self.multiplier}")
        if self.max_delay < self.initial:
            raise bad("max_delay", f"({self.max_delay}) must be >= initial ({self.initial})")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise bad("max_attempts", f"must be >= 1 or unset (unlimited), got {self.max_attempts}")
        if not 0 <= self.jitter <= 1:
            raise bad("jitter", f"must be between 0 and 1, got {self.jitter}")
        if self.on_exhausted not in ("halt", "skip"):
            raise bad("on_exhausted", f"must be 'halt' or 'skip', got {self.on_exhausted!r}")
        for name in self.bug_errors:
            if not _CLASS_NAME.fullmatch(name):
                raise bad("bug_errors", f"must name exception classes, got {name!r}")
        for key in ("bug_checkpoints", "bug_attempts"):
            if getattr(self, key) < 1:
                raise bad(key, f"must be at least 1, got {getattr(self, key)}")

    def exhausted(self, attempts: int) -> bool:
        """True when ``attempts`` failed attempts use up the policy."""
        return self.max_attempts is not None and attempts >= self.max_attempts

    def means_a_bug(self, exc: BaseException) -> bool:
        """True when ``exc``'s type, or a base of it, is one ``bug_errors`` names (``Name`` or
        ``module.Name``)."""
        names = self.bug_errors
        return bool(names) and any(
            cls.__name__ in names or f"{cls.__module__}.{cls.__qualname__}" in names
            for cls in type(exc).__mro__
        )

    def delay(self, attempt: int) -> float:
        """Seconds to wait after the ``attempt``-th failure (1-based)."""
        try:
            base = min(self.max_delay, self.initial * self.multiplier ** (attempt - 1))
        except OverflowError:
            base = self.max_delay
        if self.jitter:
            base *= random.uniform(1 - self.jitter, 1 + self.jitter)
        return min(base, self.max_delay)


_CLASS_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")

#: How a pipeline retries a write to its progress store (a watermark save, a dead letter).
STORE_WRITE_RETRY = RetryPolicy(initial=0.1, max_delay=5.0)


class RetryAbandoned(IndexerError):
    """``retry`` stopped waiting because its ``stop`` event was set; ``__cause__`` is the last
    failure."""


async def retry(
    operation: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    retry_on: Callable[[Exception], bool] | None = None,
    on_retry: Callable[[int, Exception, float], None] | None = None,
    stop: asyncio.Event | None = None,
    delay_of: Callable[[Exception, float], float] | None = None,
) -> T:
    """``await operation()`` until it returns, and return what it returned.

    A failure that ``retry_on`` refuses (default: any ``Exception`` is retried) propagates at
    once; so does the last one when ``policy`` is exhausted. ``delay_of(error, delay)`` may
    change the policy's wait after a failure (a server's ``Retry-After``). Before each wait
    ``on_retry(attempt, error, delay)`` is called (to log or count it). Setting ``stop`` ends a
    wait at once and raises ``RetryAbandoned`` from the last failure."""
    attempts = 0
    while True:
        try:
            return await operation()
        except Exception as exc:
            if retry_on is not None and not retry_on(exc):
                raise
            attempts += 1
            if policy.exhausted(attempts):
                raise
            delay = policy.delay(attempts)
            if delay_of is not None:
                delay = delay_of(exc, delay)
            if on_retry is not None:
                on_retry(attempts, exc, delay)
            if stop is None:
                await asyncio.sleep(delay)
            elif not await sleep_unless_set(stop, delay):
                raise RetryAbandoned(f"gave up retrying at shutdown: {exc!r}") from exc


def logged_retry(event: str, **fields: Any) -> Callable[[int, Exception, float], None]:
    """An ``on_retry`` for ``retry`` that logs each failure as a warning: ``event`` with
    ``fields``, the attempt, the delay before the next and the error."""

    def on_retry(attempt: int, exc: Exception, delay: float) -> None:
        log.warning(event, **fields, attempt=attempt, delay=round(delay, 3), error=repr(exc))

    return on_retry


async def sleep_unless_set(event: asyncio.Event, delay: float) -> bool:
    """Sleep ``delay`` seconds; return False at once if ``event`` is or becomes set."""
    if event.is_set():
        return False
    try:
        async with asyncio.timeout(delay):
            await event.wait()
    except TimeoutError:
        return True
    return False

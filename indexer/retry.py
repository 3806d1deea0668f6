"""Retrying: the policy (exponential backoff with jitter, bounded or unlimited attempts) and the
one helper every layer that retries an operation uses.

Each operation is retried by one layer only: a commit and a watermark save by the pipeline's
committer, a dead letter by the processor, a lease by the chunked runner's heartbeat, the
switch to WAL by the SQLite connection. The stores themselves never retry.
"""

from __future__ import annotations

import asyncio
import random
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
    """

    initial: float = 0.1
    multiplier: float = 2.0
    max_delay: float = 30.0
    max_attempts: int | None = None
    jitter: float = 0.2
    on_exhausted: Literal["halt", "skip"] = "halt"

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

    def exhausted(self, attempts: int) -> bool:
        """True when ``attempts`` failed attempts use up the policy."""
        return self.max_attempts is not None and attempts >= self.max_attempts

    def delay(self, attempt: int) -> float:
        """Seconds to wait after the ``attempt``-th failure (1-based)."""
        try:
            base = min(self.max_delay, self.initial * self.multiplier ** (attempt - 1))
        except OverflowError:
            base = self.max_delay
        if self.jitter:
            base *= random.uniform(1 - self.jitter, 1 + self.jitter)
        return min(base, self.max_delay)


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
) -> T:
    """``await operation()`` until it returns, and return what it returned.

    A failure that ``retry_on`` refuses (default: any ``Exception`` is retried) propagates at
    once; so does the last one when ``policy`` is exhausted. Before each wait ``on_retry(attempt,
    error, delay)`` is called (to log or count it). Setting ``stop`` ends a wait at once and
    raises ``RetryAbandoned`` from the last failure."""
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

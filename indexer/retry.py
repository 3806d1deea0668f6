"""Retry policy: exponential backoff with jitter, bounded or unlimited attempts."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Literal

from .errors import ConfigurationError

__all__ = ["RetryPolicy", "sleep_unless_set"]


@dataclass(frozen=True)
class RetryPolicy:
    """How failed ``process_checkpoint`` calls and failed commits are retried.

    The n-th retry waits ``min(max_delay, initial * multiplier ** (n - 1))`` seconds, scaled by a
    random factor in ``[1 - jitter, 1 + jitter]`` (and still capped at ``max_delay``).
    ``max_attempts=None`` retries forever. When attempts run out, ``on_exhausted="halt"`` stops the
    pipeline with an error naming the checkpoint; ``"skip"`` dead-letters it and goes on.
    """

    initial: float = 0.1
    multiplier: float = 2.0
    max_delay: float = 30.0
    max_attempts: int | None = None
    jitter: float = 0.2
    on_exhausted: Literal["halt", "skip"] = "halt"
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

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
            base *= self.rng.uniform(1 - self.jitter, 1 + self.jitter)
        return min(base, self.max_delay)


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

"""The fault rules of a remote feed's requests: what each failure means, and how it is told.

- **Not produced yet**: HTTP 404 (an object store's "not found"). The checkpoint is at or past
  the feed's tip: the reader polls it every ``poll_interval`` (``follow``) or ends the stream
  there (a bounded run short of its last checkpoint then fails: ``FeedEndedEarly``).
- **Transient** (``TransientFetchError``): no connection, no answer within the timeouts, HTTP
  408, 429 (its ``Retry-After`` honoured), 5xx, a body cut short or a connection reset in it, a
  body that does not decode. Retried with exponential backoff and jitter up to the policy's
  ``max_delay``, forever; each retry counted by reason (``FeedStats.fetch_retries``), and
  logged once when a streak of them starts (at most once a minute for each reason) and once
  when requests succeed again.
- **Permanent** (``FeedRequestRefused``, exit code 1): HTTP 400, 401, 403, any other 4xx, a
  malformed URL. The run halts with one line naming the URL, its credentials masked.

A request slower than ``slow_request`` seconds logs a warning (at most one a minute, with the
count since the last). The client libraries' own retries are turned off: these rules are the
only retry layer.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .._dsn import mask_dsn
from .._log import Logger
from ..errors import IndexerError
from ..retry import RetryPolicy, retry
from ..stats import FETCH_RETRY_REASONS, FeedStats

__all__ = [
    "FeedRequestRefused",
    "FetchFaults",
    "TransientFetchError",
    "retry_after_seconds",
    "status_fault",
]

T = TypeVar("T")
logger = Logger("indexer.sources")

#: Seconds between two warnings of the same kind (a streak's start for one reason, a slow
#: request): a flapping server is counted exactly, and logged a line a minute.
WARN_EVERY = 60.0


class TransientFetchError(Exception):
    """A request failed in a way a later attempt may not: retried. ``reason`` is one of
    ``FETCH_RETRY_REASONS``; ``retry_after`` the seconds a server asked to wait, if it did.
    The message names the URL (masked) once, whether ``detail`` starts with it or not."""

    def __init__(self, reason: str, url: str, detail: str, retry_after: float | None = None):
        assert reason in FETCH_RETRY_REASONS, reason
        where = mask_dsn(url)
        super().__init__(detail if detail.startswith(f"{where}: ") else f"{where}: {detail}")
        self.reason = reason
        self.url = url
        self.retry_after = retry_after


class FeedRequestRefused(IndexerError):
    """A request the feed refuses whatever the number of attempts (400, 401, 403, another 4xx,
    a malformed URL): the run halts with this one line, the URL's credentials masked."""

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(
            f"the feed refused a request: {detail}: {mask_dsn(url)} "
            "(check the feed's URL, credentials and permissions)"
        )
        self.url = url


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header's wait in seconds (a number, or an HTTP date), None when absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    import email.utils  # here: the email package is 0.4 MB that most runs never use

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def status_fault(
    status: int, url: str, reason: str | None = None, retry_after: str | None = None
) -> TransientFetchError | FeedRequestRefused:
    """What an answer with HTTP ``status`` (neither 2xx nor 404) means: a transient fault (408,
    429, 5xx) or a refusal (any other)."""
    detail = f"HTTP {status}{f' {reason}' if reason else ''}"
    if status == 408:
        return TransientFetchError("http_408", url, detail)
    if status == 429:
        return TransientFetchError("http_429", url, detail, retry_after_seconds(retry_after))
    if status >= 500:
        return TransientFetchError("http_5xx", url, detail, retry_after_seconds(retry_after))
    return FeedRequestRefused(url, detail)


class FetchFaults:
    """One source's fault rules in action: ``run`` retries an operation's transient faults
    per ``policy`` (and the server's ``Retry-After``), counts each retry by reason in
    ``stats`` and logs streaks; ``timed`` warns about slow requests."""

    def __init__(self, stats: FeedStats, policy: RetryPolicy, slow_request: float) -> None:
        self.stats = stats
        self.policy = policy
        self.slow_request = slow_request
        self._failing = 0  # retries since the last success
        self._since = 0.0  # when the current streak started
        self._warned: dict[str, float] = {}  # reason -> when a streak of it was last logged
        self._logged = False  # the current streak was logged
        self._last_error = ""  # the latest retried failure, as "reason: error"
        self._slow_warned = -WARN_EVERY
        self._slow_unlogged = 0

    async def run(self, operation: Callable[[], Awaitable[T]]) -> T:
        """``await operation()``, its transient faults retried as the rules say."""
        result = await retry(
            operation,
            self.policy,
            retry_on=_is_transient,
            on_retry=self._on_retry,
            delay_of=_honour_retry_after,
        )
        if self._failing:
            self._recovered()
        return result

    def _on_retry(self, attempt: int, exc: Exception, delay: float) -> None:
        assert isinstance(exc, TransientFetchError)
        reason = exc.reason
        self.stats.fetch_retries[reason] = self.stats.fetch_retries.get(reason, 0) + 1
        now = time.monotonic()
        if not self._failing:
            self._since = now
        self._failing += 1
        self._last_error = f"{reason}: {exc}"
        if now - self._warned.get(reason, -WARN_EVERY) >= WARN_EVERY:
            self._warned[reason] = now
            self._logged = True
            logger.warning(
                "feed requests failing: retrying with backoff",
                reason=reason,
                error=str(exc),
                delay=round(delay, 3),
            )

    @property
    def problem(self) -> str | None:
        """Why requests fail now (since the last success), None while they succeed."""
        if not self._failing:
            return None
        return (
            f"feed requests failing for {time.monotonic() - self._since:.0f}s "
            f"({self._failing} retries; the latest: {self._last_error})"
        )

    def _recovered(self) -> None:
        failing, self._failing = self._failing, 0
        if self._logged:
            self._logged = False
            logger.info(
                "feed requests succeed again",
                retries=failing,
                seconds=round(time.monotonic() - self._since, 3),
            )

    def timed(self, url: str, started: float) -> None:
        """A request to ``url`` that started at ``started`` (``time.monotonic()``) ended: warn
        when it took longer than ``slow_request`` seconds."""
        now = time.monotonic()
        took = now - started
        if took <= self.slow_request:
            return
        self._slow_unlogged += 1
        if now - self._slow_warned >= WARN_EVERY:
            self._slow_warned = now
            count, self._slow_unlogged = self._slow_unlogged, 0
            logger.warning(
                "slow feed request",
                url=mask_dsn(url),
                seconds=round(took, 3),
                slow_requests=count,
                threshold=self.slow_request,
            )


def _is_transient(exc: Exception) -> bool:
    return isinstance(exc, TransientFetchError)


def _honour_retry_after(exc: Exception, delay: float) -> float:
    """The policy's ``delay``, or longer when the server asked for it (``Retry-After``)."""
    asked = getattr(exc, "retry_after", None)
    return delay if asked is None else max(delay, asked)

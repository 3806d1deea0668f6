"""Ordered prefetch: many requests in flight ahead of the reader, delivered strictly in order.

``OrderedPrefetcher`` fetches numbered items from ``start`` (up to ``stop``, exclusive) with up to
``concurrency`` fetches running at once, and yields them in batches in sequence order. What it
holds is bounded three ways: ``concurrency`` fetches running, ``max_bytes`` of fetched items not
yet delivered, and ``ahead`` numbers past the one the consumer waits for; a consumer that does
not ask for the next batch (its pipelines' windows are full) stops the fetching there. A fetch
that finishes starts the next one itself, so a slow item holds up delivery, not the requests.

A fetch returns None for an item that is not there yet (HTTP 404). Nothing is fetched past the
lowest such number until the consumer reaches it; there it is fetched again at once (it may
have been produced since), then, still missing, it is the feed's tip: with ``follow`` it is
polled every ``poll_interval`` seconds, else the iteration ends. A fetch that raises ends the
iteration with its error once the items before it are delivered.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

from ..errors import ConfigurationError

__all__ = ["OrderedPrefetcher", "check_prefetch"]

T = TypeVar("T")

#: What a fetch gives: the item and its size in bytes, or None when it is not there yet.
Fetched = tuple[T, int] | None


def check_prefetch(concurrency: int, max_bytes: int) -> None:
    """Refuse a ``fetch_concurrency`` or ``max_prefetch_bytes`` below 1."""
    if concurrency < 1:
        raise ConfigurationError(f"must be >= 1, got {concurrency}", key="fetch_concurrency")
    if max_bytes < 1:
        raise ConfigurationError(f"must be >= 1, got {max_bytes}", key="max_prefetch_bytes")


class OrderedPrefetcher(Generic[T]):
    """Fetches items ``start, start + 1, ...`` concurrently and yields them in order, in
    batches of at most ``batch_size`` (see the module's docstring); iterate it once."""

    def __init__(
        self,
        fetch: Callable[[int], Awaitable[Fetched[T]]],
        start: int,
        stop: int | None,
        *,
        concurrency: int,
        max_bytes: int,
        batch_size: int,
        follow: bool,
        poll_interval: float,
    ) -> None:
        check_prefetch(concurrency, max_bytes)
        self._fetch = fetch
        self._stop = stop
        self._concurrency = concurrency
        self._max_bytes = max_bytes
        self._batch_size = batch_size
        self._ahead = max(4 * concurrency, batch_size)
        self._follow = follow
        self._poll_interval = poll_interval
        self._pending: dict[int, asyncio.Task[Fetched[T]]] = {}
        self._head = start  # the next number to deliver
        self._next = start  # the next number to fetch
        self._absent: int | None = None  # the lowest number found missing, while above the head
        self._polled: int | None = None  # the number last fetched again as the head
        self._running = 0
        self._buffered = 0  # bytes fetched and not delivered
        self._closed = False

    @property
    def buffered_bytes(self) -> int:
        """Bytes fetched and not delivered yet."""
        return self._buffered

    @property
    def running(self) -> int:
        """Fetches running now."""
        return self._running

    def _launch(self, n: int) -> asyncio.Task[Fetched[T]]:
        self._running += 1
        task = asyncio.get_running_loop().create_task(self._one(n))
        self._pending[n] = task
        return task

    async def _one(self, n: int) -> Fetched[T]:
        try:
            fetched = await self._fetch(n)
        finally:
            self._running -= 1
        if fetched is None:
            if self._absent is None or n < self._absent:
                self._absent = n
        else:
            self._buffered += fetched[1]
        if not self._closed:
            self._fill()
        return fetched

    def _fill(self) -> None:
        """Start fetches while every bound allows."""
        pending, stop, limit = self._pending, self._stop, self._head + self._ahead
        if stop is not None and stop < limit:
            limit = stop
        while self._running < self._concurrency and self._buffered < self._max_bytes:
            n = self._next
            absent = self._absent
            if n >= limit or (absent is not None and n >= absent):
                return
            self._next = n + 1
            if n not in pending:
                self._launch(n)

    def __aiter__(self) -> AsyncIterator[list[tuple[T, int]]]:
        return self._batches()

    async def _batches(self) -> AsyncIterator[list[tuple[T, int]]]:
        pending, stop = self._pending, self._stop
        try:
            while stop is None or self._head < stop:
                self._fill()
                head = self._head
                task = pending.get(head) or self._launch(head)
                # A fetch's error ends the iteration here, after the items before it.
                fetched = task.result() if task.done() else await task
                if fetched is None:
                    del pending[head]
                    if not await self._at_missing(head):
                        return
                    continue
                batch = self._take_run(head)
                if batch:
                    yield batch
        finally:
            self._closed = True
            await self._cancel_all()

    def _take_run(self, head: int) -> list[tuple[T, int]]:
        """The fetched items from ``head`` on, up to the first not fetched (or failed)."""
        pending = self._pending
        batch: list[tuple[T, int]] = []
        n, most, size = head, self._batch_size, 0
        while len(batch) < most:
            task = pending.get(n)
            if task is None or not task.done() or task.exception() is not None:
                break
            fetched = task.result()
            if fetched is None:
                break
            del pending[n]
            batch.append(fetched)
            size += fetched[1]
            n += 1
        self._head = n
        self._buffered -= size
        if self._absent is not None and self._absent < n:
            self._absent = None
        if self._next < n:
            self._next = n
        return batch

    async def _at_missing(self, head: int) -> bool:
        """The head is not there: fetch it again (at once if that answer may be stale, after
        ``poll_interval`` at the tip); False to end the iteration (the tip, without follow)."""
        if self._polled == head:  # a fresh answer: this is the feed's tip
            if not self._follow:
                return False
            await asyncio.sleep(self._poll_interval)
        self._polled = head
        self._absent = head
        # Answers "missing" above the head are stale by the time the head moves: forget them.
        for n, task in list(self._pending.items()):
            if task.done() and task.exception() is None and task.result() is None:
                del self._pending[n]
                self._next = min(self._next, n)
        self._launch(head)
        return True

    async def _cancel_all(self) -> None:
        """Stop every fetch still running and collect every outcome (none left unretrieved)."""
        tasks = list(self._pending.values())
        self._pending.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

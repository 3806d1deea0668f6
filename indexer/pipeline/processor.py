"""The processor stage: ``concurrency`` long-lived tasks running ``process_checkpoint``.

Checkpoints wait in a ``ReadyQueue``, lowest sequence number first, so dispatch is in sequence
order and a checkpoint coming back from a long ``Retry`` goes ahead of newer ones. The tasks are
plain named tasks, ``concurrency`` of them for the whole run: a task per checkpoint would cost
a spawn each, and a pool that bounds spawned coroutines has nothing to bound when the number
of tasks is fixed (ARCHITECTURE.md, Dependencies). Failures are retried per the RetryPolicy
with cancellable sleeps; a checkpoint's first failure is logged with its traceback, and the
same error at the same line on several checkpoints halts as a bug (``RetryPolicy.bug_errors``).
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Awaitable, Callable
from heapq import heappop, heappush
from typing import TYPE_CHECKING, Any

from .._log import log
from ..errors import ConfigurationError, PipelineHalted
from ..retry import STORE_WRITE_RETRY, RetryAbandoned, logged_retry, retry, sleep_unless_set
from ..stats import PipelineStats
from ..worker import Retry, Worker
from .failures import FailingCheckpoints, Failure

if TYPE_CHECKING:
    from ..retry import RetryPolicy

#: Returned by recovery when the checkpoint yields no completion now (rescheduled, abandoned).
_NO_COMPLETION: Any = object()
_STOP = (-1, None)

#: The queue-wait histogram times one checkpoint in this many (a power of two), so as to cost
#: next to nothing per checkpoint.
QUEUE_WAIT_SAMPLE = 16
_SAMPLE_MASK = QUEUE_WAIT_SAMPLE - 1


class ReadyQueue:
    """Checkpoints waiting for a free task, lowest sequence number first, and the tasks waiting
    for one.

    New checkpoints arrive in sequence order (``put``: a deque, O(1) both ways); one coming
    back from a reschedule may be lower than some already queued (``put_back``: a heap); ``pop``
    takes the lower head of the two. ``asyncio.PriorityQueue`` costs a heap operation and about
    twice the Python calls per item, which shows at half a million checkpoints a second.
    """

    __slots__ = ("_back", "_fresh", "_idle", "_spread_pending", "enqueued_at")

    def __init__(self) -> None:
        self._fresh: deque[tuple[int, Any]] = deque()
        self._back: list[tuple[int, Any]] = []
        self._idle: deque[asyncio.Future[None]] = deque()
        self._spread_pending = False
        #: When each sampled checkpoint (a multiple of ``QUEUE_WAIT_SAMPLE``) was queued, for
        #: the queue-wait histogram; None when nobody times the pipeline.
        self.enqueued_at: dict[int, float] | None = None

    def __len__(self) -> int:
        return len(self._fresh) + len(self._back)

    def put(self, item: tuple[int, Any]) -> None:
        """Queue a new checkpoint: higher than every one ``put`` before it."""
        self._fresh.append(item)
        enqueued_at = self.enqueued_at
        if enqueued_at is not None and not item[0] & _SAMPLE_MASK:
            enqueued_at[item[0]] = time.perf_counter()
        if self._idle:
            self._wake_one()

    def put_run(self, items: list[tuple[int, Any]]) -> None:
        """``put`` for several new checkpoints, in order.

        One idle task is woken now, the others only if items are left once it has run: a
        worker that never suspends takes the whole run itself, and waking a task per item
        would have the rest find the queue empty and go back to waiting."""
        self._fresh.extend(items)
        enqueued_at = self.enqueued_at
        if enqueued_at is not None:
            now = time.perf_counter()
            for index in range(-items[0][0] & _SAMPLE_MASK, len(items), QUEUE_WAIT_SAMPLE):
                enqueued_at[items[index][0]] = now
        if self._idle:
            self._wake_one()
            if len(items) > 1 and self._idle and not self._spread_pending:
                self._spread_pending = True
                asyncio.get_running_loop().call_soon(self._spread)

    def _spread(self) -> None:
        """Wake an idle task for each item still queued."""
        self._spread_pending = False
        for _ in range(min(len(self), len(self._idle))):
            self._wake_one()

    def put_back(self, item: tuple[int, Any]) -> None:
        """Queue a checkpoint again, in its place among the others."""
        heappush(self._back, item)
        if self._idle:
            self._wake_one()

    def pop(self) -> tuple[int, Any] | None:
        """The lowest item, or None when empty (no waiting)."""
        back, fresh = self._back, self._fresh
        if back and (not fresh or back[0][0] < fresh[0][0]):
            return heappop(back)
        return fresh.popleft() if fresh else None

    async def get(self) -> tuple[int, Any]:
        """The lowest item, waiting for one."""
        while not (self._fresh or self._back):
            waiter = asyncio.get_running_loop().create_future()
            self._idle.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # it was woken for an item it will not take: pass it on
                raise
        item = self.pop()
        assert item is not None
        return item

    def clear(self) -> None:
        self._fresh.clear()
        self._back.clear()
        if self.enqueued_at is not None:
            self.enqueued_at.clear()

    def _wake_one(self) -> None:
        idle = self._idle
        while idle:
            waiter = idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


class Processor:
    """Runs a Worker over dispatched checkpoints and reports each completion exactly once."""

    def __init__(
        self,
        pipeline: str,
        worker: Worker[Any, Any],
        *,
        concurrency: int,
        retry: RetryPolicy,
        reschedule_threshold: float,
        stopping: asyncio.Event,
        on_complete: Callable[[int, Any], None],
        on_halt: Callable[[PipelineHalted], None],
        dead_letter: Callable[[int, str], Awaitable[None]],
        stats: PipelineStats,
        failing: FailingCheckpoints | None = None,
        timed: bool = True,
    ) -> None:
        self.pipeline = pipeline
        self.worker = worker
        self.concurrency = concurrency
        self.retry = retry
        self.reschedule_threshold = reschedule_threshold
        self.stats = stats
        self.timed = timed
        self._stopping = stopping
        self._on_complete = on_complete
        self._on_halt = on_halt
        self._dead_letter = dead_letter
        #: The checkpoints failing now (the lowest holds the watermark back).
        self.failing = failing if failing is not None else FailingCheckpoints()
        #: Where checkpoints wait for a free task; the pipeline puts them here.
        self.queue = ReadyQueue()
        if timed:
            self.queue.enqueued_at = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def queued(self) -> int:
        return len(self.queue)

    def start(self) -> None:
        """Start the ``concurrency`` tasks."""
        self._tasks = [
            asyncio.create_task(self._run(), name=f"{self.pipeline}:worker-{i}")
            for i in range(self.concurrency)
        ]

    async def shutdown(self) -> None:
        """Drop what was not started, let running calls finish, and wait for the tasks."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        queue = self.queue
        queue.clear()
        for _ in self._tasks:
            queue.put(_STOP)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def abort(self) -> None:
        """Cancel every task at once."""
        for timer in self._timers.values():
            timer.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self) -> None:
        get, pop = self.queue.get, self.queue.pop
        process = self.worker.process_checkpoint
        complete = self._on_complete
        histogram = self.stats.processing_seconds
        counts, bounds = histogram.counts, histogram.bounds
        observe_wait = self.stats.queue_wait_seconds.observe
        enqueued_at = self.queue.enqueued_at
        clock = time.perf_counter
        timed = self.timed
        try:
            while True:
                sequence_number, checkpoint = pop() or await get()
                if checkpoint is None:
                    return
                try:
                    if timed:  # Histogram.observe, inlined: this runs once per checkpoint
                        started = clock()
                        if not sequence_number & _SAMPLE_MASK and enqueued_at:
                            queued = enqueued_at.pop(sequence_number, None)
                            if queued is not None:
                                observe_wait(started - queued)
                        message = await process(checkpoint)
                        elapsed = clock() - started
                        counts[bisect_left(bounds, elapsed)] += 1
                        histogram.sum += elapsed
                    else:
                        message = await process(checkpoint)
                except Exception as exc:
                    message = await self._recover(sequence_number, checkpoint, exc)
                    if message is _NO_COMPLETION:
                        continue
                complete(sequence_number, message)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug of ours or a BaseException from user code
            self._on_halt(PipelineHalted(self.pipeline, f"worker task crashed: {exc!r}"))
            raise

    async def _recover(self, sequence_number: int, checkpoint: Any, exc: Exception) -> Any:
        """Retry a failed checkpoint until it succeeds, is rescheduled, skipped or abandoned,
        or its failures show a bug."""
        attempts = 0
        failing = self.failing
        while True:
            if isinstance(exc, Retry):
                if exc.after > self.reschedule_threshold:
                    failing.recovered(sequence_number)  # waiting as asked, not failing
                    self._reschedule(sequence_number, checkpoint, exc.after)
                    return _NO_COMPLETION
                if not await sleep_unless_set(self._stopping, exc.after):
                    return _NO_COMPLETION
            else:
                attempts += 1
                failure = failing.failed(sequence_number, attempts, exc)
                bug = self._bug(failure, exc)
                if bug is not None:
                    self._on_halt(bug)
                    return _NO_COMPLETION
                if self.retry.exhausted(attempts):
                    return await self._exhausted(sequence_number, attempts, exc, failure)
                self.stats.retries += 1
                delay = self.retry.delay(attempts)
                self._log_failure(sequence_number, attempts, exc, failure, delay)
                if not await sleep_unless_set(self._stopping, delay):
                    return _NO_COMPLETION
            try:
                message = await self.worker.process_checkpoint(checkpoint)
            except Exception as again:
                exc = again
            else:
                failing.recovered(sequence_number)
                return message

    def _log_failure(
        self, sequence_number: int, attempts: int, exc: Exception, failure: Failure, delay: float
    ) -> None:
        """One line per retry; a checkpoint's first failure also carries the traceback, unless
        the same failure's was logged within a minute (``traceback_due``)."""
        fields: dict[str, Any] = {
            "pipeline": self.pipeline,
            "checkpoint": sequence_number,
            "attempt": attempts,
            "delay": round(delay, 3),
            "error": repr(exc),
            "location": failure.location,
        }
        if attempts == 1 and self.failing.traceback_due(failure):
            fields["exc_info"] = exc
        log.warning("checkpoint failed, retrying", **fields)

    def _bug(self, failure: Failure, exc: Exception) -> PipelineHalted | None:
        """The halt when ``failure`` shows a bug (``RetryPolicy.bug_errors``): a type of error
        in code, raised at the same line with the same message by ``bug_checkpoints``
        checkpoints (``concurrency`` if fewer: no more can fail at once) ``bug_attempts``
        times each. An outage's errors are of other types and never halt here."""
        policy = self.retry
        if not policy.means_a_bug(exc):
            return None
        repeating = self.failing.repeating(failure, policy.bug_attempts)
        if len(repeating) < min(policy.bug_checkpoints, self.concurrency):
            return None
        shown = ", ".join(map(str, repeating[:5])) + (", ..." if len(repeating) > 5 else "")
        which = (
            f"checkpoint {shown} failed"
            if len(repeating) == 1
            else f"checkpoints {shown} each failed"
        )
        return PipelineHalted(
            self.pipeline,
            f"{which} {policy.bug_attempts} times with {exc!r} at {failure.location} (in "
            f"{failure.function}): a bug in the code, not an outage (see retry.bug_errors); "
            "fix it and run again",
            repeating[0],
        )

    async def _exhausted(
        self, sequence_number: int, attempts: int, exc: Exception, failure: Failure
    ) -> Any:
        error = (
            f"checkpoint {sequence_number} failed after {attempts} attempts: {exc!r} "
            f"at {failure.location}"
        )
        if self.retry.on_exhausted == "skip":
            if not await self._record_dead_letter(sequence_number, repr(exc)):
                return _NO_COMPLETION  # stopped before it was recorded: it stays undone
            self.failing.recovered(sequence_number)
            self.stats.dead_letters += 1
            log.error("checkpoint dead-lettered", pipeline=self.pipeline, error=error)
            return None
        self._on_halt(PipelineHalted(self.pipeline, error, sequence_number))
        return _NO_COMPLETION

    async def _record_dead_letter(self, sequence_number: int, error: str) -> bool:
        """Write the dead letter, retrying a failing store until it is written (True) or the
        pipeline stops (False)."""
        logged = logged_retry(
            "dead letter not recorded, retrying", pipeline=self.pipeline, checkpoint=sequence_number
        )

        def failed(attempt: int, exc: Exception, delay: float) -> None:
            self.stats.store_retries += 1
            logged(attempt, exc, delay)

        try:
            await retry(
                lambda: self._dead_letter(sequence_number, error),
                STORE_WRITE_RETRY,
                retry_on=lambda exc: not isinstance(exc, ConfigurationError),
                on_retry=failed,
                stop=self._stopping,
            )
        except RetryAbandoned:
            return False
        return True

    def _reschedule(self, sequence_number: int, checkpoint: Any, after: float) -> None:
        """Give the slot back and dispatch the checkpoint again when it is due."""

        def due() -> None:
            self._timers.pop(sequence_number, None)
            if not self._stopping.is_set():
                self.queue.put_back((sequence_number, checkpoint))

        loop = asyncio.get_running_loop()
        self._timers[sequence_number] = loop.call_later(after, due)

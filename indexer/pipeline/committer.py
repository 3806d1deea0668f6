"""The committer stage: batches of messages in checkpoint order, commits, saved watermarks.

It receives ``(sequence_number, message)`` pairs in sequence order as the watermark passes them.
With a Reducer it batches the messages (count, bytes, age, ``should_close_batch``), commits
each batch with retries (a failure latch: nothing later is committed until it succeeds), then
saves the watermark and frees the batch's checkpoints from the in-flight window. Without one it
saves the watermark at most every ``progress_interval`` seconds. Either way the saved watermark
never passes a checkpoint whose message is not committed.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .._log import log
from ..errors import AlreadyCommitted, ConfigurationError, FencingError, PipelineHalted
from ..progress import ProgressStore, TransactionalProgressStore, base_store
from ..reducer import Reducer
from ..retry import STORE_WRITE_RETRY, RetryAbandoned, logged_retry, retry, sleep_unless_set
from ..stats import CheckpointTimes, PipelineStats
from .watermark import WatermarkTracker

if TYPE_CHECKING:
    from ..retry import RetryPolicy


class _Abandoned(Exception):
    """A retry loop gave up because the pipeline is stopping."""


class Committer:
    """Commits a pipeline's messages and saves its watermark, in checkpoint order."""

    def __init__(
        self,
        pipeline: str,
        tracker: WatermarkTracker,
        store: ProgressStore,
        reducer: Reducer[Any] | None,
        *,
        saved: int,
        progress_interval: float,
        stopping: asyncio.Event,
        stats: PipelineStats,
        times: CheckpointTimes | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.tracker = tracker
        self.store = store
        self.reducer = reducer
        self.saved = saved  # the watermark the store holds
        #: When this run last raised the saved watermark (when it started, until it does).
        self.saved_at = time.time()
        self.stats = stats
        #: The read checkpoints' timestamps, for the committed one's (``stats``).
        self.times = times
        self.progress_interval = progress_interval
        self._stopping = stopping
        self._transactional = reducer is not None and reducer.uses_store_transaction(
            base_store(store)
        )
        self._items: deque[tuple[int, Any]] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._closed = asyncio.Event()
        self._batch: list[Any] = []
        self._batch_bytes = 0
        self._batch_first = 0  # sequence number of the batch's first message
        self._batch_deadline = 0.0
        self._covered = saved  # everything below has been batched or carried no message

    # -- called by the pipeline -------------------------------------------------------------

    def push(self, released: list[tuple[int, Any]]) -> None:
        """Hand over messages the watermark has just passed, in order."""
        self._items.extend(released)
        self._wake.set()

    @property
    def notifier(self) -> Callable[[], None]:
        """What to call when the watermark rose (used without a reducer): the wake event's
        ``set`` itself, as the pipeline calls it once per checkpoint."""
        return self._wake.set

    def window_full(self) -> None:
        """The reader waits for room: commit the open batch instead of waiting for its limits,
        so a batch that could never fill the window cannot deadlock it."""
        self._wake.set()

    def close(self) -> None:
        """Commit what is left and save the final watermark, then end ``run``."""
        self._closing = True
        self._closed.set()
        self._wake.set()

    # -- the task ---------------------------------------------------------------------------

    async def run(self) -> None:
        if self.reducer is None:
            await self._run_watermark_only()
        else:
            await self._run_reducer(self.reducer)

    async def _run_watermark_only(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                closing = self._closing
                if self.tracker.watermark > self.saved:
                    await self._save(self.tracker.watermark)
                if closing:
                    return
                await sleep_unless_set(self._closed, self.progress_interval)
        except _Abandoned:
            return

    async def _run_reducer(self, reducer: Reducer[Any]) -> None:
        items = self._items
        max_size = reducer.max_batch_size
        max_bytes = reducer.max_batch_bytes
        age = reducer.max_batch_age
        should_close = reducer.should_close_batch
        overridden = type(reducer).should_close_batch is not Reducer.should_close_batch
        loop = asyncio.get_running_loop()
        batch = self._batch
        tracker = self.tracker
        try:
            while True:
                if not items and not self._closing and not (batch and tracker.is_blocked):
                    self._wake.clear()
                    if batch and age is not None:
                        timeout = self._batch_deadline - loop.time()
                        if timeout > 0:
                            try:
                                async with asyncio.timeout(timeout):
                                    await self._wake.wait()
                            except TimeoutError:
                                pass
                    else:
                        await self._wake.wait()
                while items:
                    sequence_number, message = items.popleft()
                    if message is None:
                        self._covered = sequence_number + 1
                        continue
                    size = reducer.message_size(message) if max_bytes is not None else 0
                    if batch and (
                        (max_bytes is not None and self._batch_bytes + size > max_bytes)
                        or (overridden and should_close(batch, message))
                    ):
                        await self._commit(sequence_number)
                    if not batch:
                        self._batch_first = sequence_number
                        if age is not None:
                            self._batch_deadline = loop.time() + age
                    batch.append(message)
                    self._batch_bytes += size
                    self._covered = sequence_number + 1
                    if (max_size is not None and len(batch) >= max_size) or (
                        max_bytes is not None and self._batch_bytes >= max_bytes
                    ):
                        await self._commit(self._covered)
                if batch and (
                    self._closing
                    or tracker.is_blocked
                    or (age is not None and loop.time() >= self._batch_deadline)
                ):
                    await self._commit(self._covered)
                if not batch and self._covered > self.saved:
                    # Checkpoints without messages: nothing to commit, only the watermark.
                    await self._save(self._covered)
                if self._closing and not items:
                    return
        except _Abandoned:
            return

    # -- commit and save --------------------------------------------------------------------

    async def _commit(self, upto: int) -> None:
        """Commit the open batch, which covers every checkpoint below ``upto``."""
        reducer = self.reducer
        assert reducer is not None
        batch = self._batch
        what = f"commit of checkpoints {self._batch_first}..{upto - 1}"
        if self._transactional:
            store = self.store
            assert isinstance(store, TransactionalProgressStore)

            tried = False

            async def commit() -> None:
                # After a failure the earlier attempt may have committed (its reply lost):
                # the retry first checks the stored position, in the transaction.
                nonlocal tried
                recheck, tried = tried, True
                try:
                    async with store.transaction(self.pipeline, upto, recheck=recheck) as conn:
                        await reducer.commit_in_transaction(conn, batch)
                except AlreadyCommitted as exc:
                    log.info(f"{what}: committed already", pipeline=self.pipeline, why=str(exc))

            seconds = await self._retrying(commit, reducer.commit_retry, what, batch=True)
            self.saved = max(self.saved, upto)
            self._raised()
        else:
            seconds = await self._retrying(
                lambda: reducer.commit(batch), reducer.commit_retry, what, batch=True
            )
        stats = self.stats
        stats.batches_committed += 1
        stats.commit_seconds.observe(seconds)
        stats.batch_messages.observe(len(batch))
        batch.clear()
        self._batch_bytes = 0
        if not self._transactional:
            await self._save(upto)
        self.tracker.release(upto)

    async def _save(self, watermark: int) -> None:
        store = self.store

        async def save() -> None:
            self.saved = await store.save(self.pipeline, watermark)
            self._raised()

        await self._retrying(save, STORE_WRITE_RETRY, "watermark save", batch=False)
        self.tracker.release(watermark)

    def _raised(self) -> None:
        """The saved watermark rose: when, and the newest committed checkpoint's timestamp
        (once per commit, not per checkpoint)."""
        stats = self.stats
        self.saved_at = stats.committed_at = time.time()
        if self.times is not None:
            stamp = self.times.at(self.saved - 1)
            if stamp is not None:
                stats.watermark_timestamp_ms = stamp
                stats.recent_stamps.append((self.saved, stamp))

    async def _retrying(
        self,
        operation: Callable[[], Awaitable[None]],
        policy: RetryPolicy,
        what: str,
        *,
        batch: bool,
    ) -> float:
        """Run ``operation`` until it succeeds (``retry``); returns the seconds the successful
        try took; ``batch``: its failures count as failed batches. A fenced-out write or a
        configuration error halts at once: retrying cannot help. So does running out of
        attempts; a stop while waiting ends it (``_Abandoned``)."""
        attempts = 0
        started = 0.0

        async def timed() -> None:
            nonlocal started
            started = time.perf_counter()
            await operation()

        def failed(attempt: int, exc: Exception, delay: float) -> None:
            nonlocal attempts
            attempts = attempt
            if batch:
                self.stats.batches_failed += 1
                self.stats.commit_retries += 1
            else:
                self.stats.store_retries += 1
            seconds = round(time.perf_counter() - started, 3)
            logged_retry(f"{what} failed, retrying", pipeline=self.pipeline, seconds=seconds)(
                attempt, exc, delay
            )

        try:
            await retry(
                timed,
                policy,
                retry_on=lambda exc: not isinstance(exc, FencingError | ConfigurationError),
                on_retry=failed,
                stop=self._stopping,
            )
        except FencingError as exc:
            raise PipelineHalted(self.pipeline, f"{what} refused: {exc}") from exc
        except ConfigurationError as exc:
            raise PipelineHalted(self.pipeline, f"{what} failed: {exc}") from exc
        except RetryAbandoned as exc:
            error = repr(exc.__cause__)
            log.error(f"{what} abandoned at shutdown", pipeline=self.pipeline, error=error)
            raise _Abandoned from exc
        except Exception as exc:
            if batch:
                self.stats.batches_failed += 1
            raise PipelineHalted(
                self.pipeline, f"{what} failed after {attempts + 1} attempts: {exc!r}"
            ) from exc
        return time.perf_counter() - started

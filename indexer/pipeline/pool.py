"""WorkerPool: one pipeline, wiring the window, the processor and the committer together."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import structlog

from ..errors import ConfigurationError, PipelineHalted
from ..metrics import PipelineStats
from ..progress import ProgressStore, TransactionalProgressStore, base_store
from ..reducer import Reducer
from ..retry import RetryPolicy
from ..worker import Worker
from .committer import Committer
from .processor import Processor
from .watermark import WatermarkTracker

CheckpointT = TypeVar("CheckpointT")
MessageT = TypeVar("MessageT")

log = structlog.get_logger("indexer")

__all__ = ["WorkerPool"]


class WorkerPool(Generic[CheckpointT, MessageT]):
    """A pipeline: a Worker run ``concurrency`` at a time, and an optional Reducer.

    ``max_inflight`` (and optionally ``max_inflight_bytes``, counted in encoded checkpoint bytes)
    bounds the checkpoints read but not yet committed; the shared reader waits while it is full.
    A ``Retry(after=...)`` longer than ``reschedule_threshold`` seconds gives the task slot back.
    Without a reducer the watermark is saved at most every ``progress_interval`` seconds.
    """

    def __init__(
        self,
        worker: Worker[CheckpointT, MessageT],
        *,
        concurrency: int = 1,
        reducer: Reducer[MessageT] | None = None,
        retry: RetryPolicy | None = None,
        name: str | None = None,
        max_inflight: int | None = None,
        max_inflight_bytes: int | None = None,
        reschedule_threshold: float = 1.0,
        progress_interval: float = 0.5,
    ) -> None:
        self.worker = worker
        self.name = name or worker.pipeline_name
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(
                f"pipeline {self.name!r}: concurrency must be at least 1, got {concurrency!r}"
            )
        if reducer is not None:
            reducer.validate()
        batch_size = reducer.max_batch_size if reducer is not None else None
        if max_inflight is None:
            max_inflight = max(1024, 4 * concurrency, 2 * (batch_size or 0))
        if max_inflight < 1:
            raise ConfigurationError(
                f"pipeline {self.name!r}: max_inflight must be at least 1, got {max_inflight}"
            )
        if max_inflight_bytes is not None and max_inflight_bytes < 1:
            raise ConfigurationError(
                f"pipeline {self.name!r}: max_inflight_bytes must be positive, "
                f"got {max_inflight_bytes}"
            )
        if batch_size is not None and batch_size > max_inflight:
            raise ConfigurationError(
                f"pipeline {self.name!r}: reducer max_batch_size {batch_size} can never fill: "
                f"at most max_inflight={max_inflight} checkpoints are in flight; "
                "raise max_inflight or lower max_batch_size"
            )
        if reschedule_threshold < 0 or progress_interval < 0:
            raise ConfigurationError(
                f"pipeline {self.name!r}: reschedule_threshold and progress_interval must be >= 0"
            )
        self.concurrency = concurrency
        self.reducer = reducer
        self.retry = retry or RetryPolicy()
        self.max_inflight = max_inflight
        self.max_inflight_bytes = max_inflight_bytes
        self.reschedule_threshold = reschedule_threshold
        self.progress_interval = progress_interval
        self.checkpoint_type: type[Any] = worker.checkpoint_type
        self._hooked = type(worker).preprocess_hook is not Worker.preprocess_hook
        self.error: PipelineHalted | None = None
        self.start_watermark = 0
        self.stats = PipelineStats()
        self.committer: Committer | None = None
        self._running = False

    def __repr__(self) -> str:
        return f"WorkerPool({self.name!r}, concurrency={self.concurrency})"

    # -- lifecycle, driven by IndexerExecutor -----------------------------------------------

    def _reset(self, start: int) -> None:
        self.start_watermark = start
        self.committer = None

    async def _start(
        self,
        store: ProgressStore,
        start: int,
        on_halt: Callable[[WorkerPool[Any, Any]], None],
        timed: bool = True,
    ) -> None:
        if self.reducer is not None:
            self.reducer.check_store(base_store(store))
        if (
            self.reducer is not None
            and self.reducer.uses_store_transaction(base_store(store))
            and not isinstance(store, TransactionalProgressStore)
        ):
            raise ConfigurationError(
                f"pipeline {self.name!r}: {type(self.reducer).__name__} commits in the progress "
                f"store's transaction, but {type(store).__name__} has none; use "
                "SqliteProgressStore or PostgresProgressStore"
            )
        self.start_watermark = start
        self.error = None
        self._on_halt = on_halt
        self._stopping = asyncio.Event()
        self._settled = asyncio.Event()
        self.tracker = WatermarkTracker(
            start,
            max_count=self.max_inflight,
            max_bytes=self.max_inflight_bytes,
            release_on_complete=self.reducer is None,
        )
        self.committer = committer = Committer(
            self.name,
            self.tracker,
            store,
            self.reducer,
            saved=start,
            progress_interval=self.progress_interval,
            stopping=self._stopping,
            stats=self.stats,
        )
        self.tracker.on_blocked = committer.window_full
        self._push = committer.push
        self._notify = committer.notifier
        self.processor = Processor(
            self.name,
            self.worker,
            concurrency=self.concurrency,
            retry=self.retry,
            reschedule_threshold=self.reschedule_threshold,
            stopping=self._stopping,
            on_complete=self._complete if self.reducer is not None else self._complete_no_reducer,
            on_halt=self._halt,
            dead_letter=lambda seq, error: store.add_dead_letter(self.name, seq, error),
            stats=self.stats,
            timed=timed,
        )
        self._enqueue = self.processor.queue.put
        self._committer_task = asyncio.create_task(committer.run(), name=f"{self.name}:commit")
        self._committer_task.add_done_callback(self._committer_done)
        await self.processor.start()
        self._running = True

    def offer(self, checkpoint: Any, size: int) -> bool:
        """Take a checkpoint if the window has room (the reader's fast path, no await).

        Returns False, having done nothing, when the caller must ``await submit`` instead."""
        tracker = self.tracker
        if not tracker._has_room(size):
            return False
        sequence_number = checkpoint.sequence_number
        if sequence_number >= self.start_watermark and self.error is None:
            tracker.admit_nowait(sequence_number, size)
            if self._hooked:
                self._dispatch(sequence_number, checkpoint)
            else:
                self._enqueue((sequence_number, checkpoint))
        return True

    def offer_run(self, batch: list[tuple[Any, int]]) -> int:
        """Take as many ``(checkpoint, size)`` pairs from the front of ``batch`` as the window
        has room for, in one go; returns how many were taken (the reader offers or submits the
        rest one by one). Only the plain case is done here, consecutive checkpoints at or above
        the start with no byte bound and no preprocess hook; otherwise it takes none."""
        tracker = self.tracker
        if self._hooked or self.max_inflight_bytes is not None or self.error is not None:
            return 0
        room = tracker.max_count - tracker.pending
        if room <= 0:
            return 0
        taken = batch[:room] if room < len(batch) else batch
        checkpoints = [checkpoint for checkpoint, _ in taken]
        numbers = [checkpoint.sequence_number for checkpoint in checkpoints]
        if numbers[0] < self.start_watermark:
            return 0
        if not tracker.admit_run(numbers, [size for _, size in taken]):
            return 0
        self.processor.queue.put_run(list(zip(numbers, checkpoints, strict=True)))
        return len(taken)

    async def submit(self, checkpoint: Any, size: int) -> None:
        """Admit one checkpoint (waiting for room), run the preprocess hook, dispatch it."""
        sequence_number = checkpoint.sequence_number
        if sequence_number < self.start_watermark or self.error is not None:
            return
        await self.tracker.admit(sequence_number, size)
        self._dispatch(sequence_number, checkpoint)

    def _dispatch(self, sequence_number: int, checkpoint: Any) -> None:
        if self._hooked:
            try:
                self.worker.preprocess_hook(checkpoint)
            except Exception as exc:
                self._halt(
                    PipelineHalted(
                        self.name,
                        f"preprocess_hook failed at checkpoint {sequence_number}: {exc!r}",
                        sequence_number,
                    )
                )
                return
        self._enqueue((sequence_number, checkpoint))

    def _complete_no_reducer(self, sequence_number: int, message: Any) -> None:
        self.stats.processed += 1
        if self.tracker.complete(sequence_number):
            self._notify()
            if not self.tracker.incomplete:
                self._settled.set()

    def _complete(self, sequence_number: int, message: Any) -> None:
        self.stats.processed += 1
        released = self.tracker.complete(sequence_number, message)
        if released:
            self._push(released)
            if not self.tracker.incomplete:
                self._settled.set()

    def _halt(self, error: PipelineHalted) -> None:
        if self.error is None:
            self.error = error
            log.error("pipeline halted", pipeline=self.name, error=str(error))
            self._settled.set()
            self._on_halt(self)

    def _committer_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            halt = exc if isinstance(exc, PipelineHalted) else None
            self._halt(halt or PipelineHalted(self.name, f"committer crashed: {exc!r}"))

    def request_stop(self) -> None:
        """Stop taking checkpoints: running calls finish, retries and queued ones are dropped."""
        if self._running:
            self._stopping.set()
            self._settled.set()

    async def _finish(self, drain: bool) -> int:
        """End the pipeline; with ``drain`` every admitted checkpoint is processed first.

        Returns the saved watermark."""
        if drain and self.tracker.incomplete and self.error is None:
            self._settled.clear()
            if self.tracker.incomplete and not self._stopping.is_set():
                await self._settled.wait()
        if self.error is not None or not drain:
            self._stopping.set()
        await self.processor.shutdown()
        committer = self.committer
        assert committer is not None
        committer.close()
        await asyncio.wait([self._committer_task])
        self._running = False
        if self.reducer is not None:
            await self.reducer.close()
        return committer.saved

    async def _abort(self) -> None:
        self._stopping.set()
        await self.processor.abort()
        self._committer_task.cancel()
        await asyncio.wait([self._committer_task])
        self._running = False
        if self.reducer is not None:
            await self.reducer.close()

    @property
    def inflight(self) -> int:
        """Checkpoints admitted but not yet committed."""
        return self.tracker.pending if self._running else 0

    @property
    def watermark(self) -> int:
        """The saved watermark: the next checkpoint this pipeline has not committed."""
        committer = self.committer
        return committer.saved if committer is not None else self.start_watermark

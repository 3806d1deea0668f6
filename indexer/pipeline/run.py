"""PipelineRun: one run of a pipeline, wiring its window, processor and committer together.

The reader hands it checkpoints in sequence order (``offer_run``, ``offer``, ``submit``); it
admits them into the in-flight window, runs the preprocess hook, and queues them for the
processor's tasks. Completions go to the watermark tracker, whose contiguous prefix goes to
the committer; the lowest checkpoint failing meanwhile goes to the store as the run's stall.
With a retention, a pruner deletes the sink's rows of old checkpoints beside the committer.
A run is built for one ``IndexerExecutor.run`` (or one chunk) and thrown away after it: the
``WorkerPool`` it came from is never changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from .._log import log
from ..errors import ConfigurationError, PipelineHalted
from ..progress import ProgressStore, TransactionalProgressStore, base_store
from ..stats import CheckpointTimes, PipelineStats
from ..worker import Worker
from .committer import Committer
from .failures import FailingCheckpoints
from .pool import WorkerPool
from .processor import Processor
from .pruner import RetentionPruner
from .stall import StallReporter
from .watermark import WatermarkTracker

__all__ = ["PipelineRun"]


class PipelineRun:
    """The per-run state of one pipeline: window, processor, committer, stop events, error.

    ``start`` is the first checkpoint this run admits (its saved watermark); ``on_halt`` is
    called once when the pipeline halts; ``stats`` receives its counters; ``times`` holds the
    timestamps of the checkpoints the reader handed over (for the committed one's). With
    ``prune`` False a retention is left to the caller (a chunked job prunes by the job's
    watermark, not a chunk's).
    """

    def __init__(
        self,
        pool: WorkerPool[Any, Any],
        store: ProgressStore,
        start: int,
        *,
        stats: PipelineStats,
        on_halt: Callable[[PipelineRun], None],
        timed: bool = True,
        times: CheckpointTimes | None = None,
        prune: bool = True,
    ) -> None:
        reducer = pool.reducer
        if reducer is not None:
            shared = base_store(store)
            reducer.check_store(shared)
            if reducer.uses_store_transaction(shared) and not isinstance(
                store, TransactionalProgressStore
            ):
                raise ConfigurationError(
                    f"pipeline {pool.name!r}: {type(reducer).__name__} commits in the progress "
                    f"store's transaction, but {type(store).__name__} has none; use "
                    "SqliteProgressStore or PostgresProgressStore"
                )
        self.pool = pool
        self.name = pool.name
        self.stats = stats
        self.error: PipelineHalted | None = None
        self._start = start
        self._on_halt = on_halt
        self._hooked = type(pool.worker).preprocess_hook is not Worker.preprocess_hook
        self._byte_bound = pool.max_inflight_bytes is not None
        self._stopping = asyncio.Event()
        self._settled = asyncio.Event()
        self.tracker = tracker = WatermarkTracker(
            start,
            max_count=pool.max_inflight,
            max_bytes=pool.max_inflight_bytes,
            release_on_complete=reducer is None,
        )
        self.committer = committer = Committer(
            pool.name,
            tracker,
            store,
            reducer,
            saved=start,
            progress_interval=pool.progress_interval,
            stopping=self._stopping,
            stats=stats,
            times=times,
        )
        tracker.on_blocked = committer.window_full
        self._push = committer.push
        self._notify = committer.notifier
        self.failing = FailingCheckpoints()
        self.stall = StallReporter(
            pool.name, store, self.failing, committed_at=lambda: committer.saved_at
        )
        self.failing.on_change = self.stall.changed
        self.processor = Processor(
            pool.name,
            pool.worker,
            concurrency=pool.concurrency,
            retry=pool.retry,
            reschedule_threshold=pool.reschedule_threshold,
            stopping=self._stopping,
            on_complete=self._complete if reducer is not None else self._complete_no_reducer,
            on_halt=self._halt,
            dead_letter=lambda seq, error: store.add_dead_letter(pool.name, seq, error),
            stats=stats,
            failing=self.failing,
            timed=timed,
        )
        self._enqueue = self.processor.queue.put
        self._committer_task: asyncio.Task[None] | None = None
        self.pruner: RetentionPruner | None = None
        if prune and reducer is not None and pool.retention is not None:
            self.pruner = RetentionPruner(
                pool.name,
                reducer,
                store,
                retention=pool.retention,
                interval=pool.retention_interval,
                watermark=lambda: committer.saved,
                stats=stats,
            )

    def __repr__(self) -> str:
        return f"PipelineRun({self.name!r}, start={self._start}, watermark={self.watermark})"

    @property
    def start(self) -> int:
        """The first checkpoint this run admits."""
        return self._start

    @property
    def watermark(self) -> int:
        """The saved watermark: the next checkpoint this pipeline has not committed."""
        return self.committer.saved

    @property
    def inflight(self) -> int:
        """Checkpoints admitted but not yet committed."""
        return self.tracker.pending

    def start_tasks(self) -> None:
        """Start the committer and the processor's tasks (and the pruner's)."""
        task = asyncio.create_task(self.committer.run(), name=f"{self.name}:commit")
        task.add_done_callback(self._committer_done)
        self._committer_task = task
        self.processor.start()
        if self.pruner is not None:
            self.pruner.start()

    # -- the reader's side -------------------------------------------------------------------

    def offer(self, checkpoint: Any, size: int) -> bool:
        """Take a checkpoint if the window has room (the reader's fast path, no await).

        Returns False, having done nothing, when the caller must ``await submit`` instead."""
        tracker = self.tracker
        if not tracker.has_room(size):
            return False
        sequence_number = checkpoint.sequence_number
        if sequence_number >= self._start and self.error is None:
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
        if self._hooked or self._byte_bound or self.error is not None:
            return 0
        tracker = self.tracker
        room = tracker.max_count - tracker.pending
        if room <= 0:
            return 0
        taken = batch[:room] if room < len(batch) else batch
        checkpoints = [checkpoint for checkpoint, _ in taken]
        numbers = [checkpoint.sequence_number for checkpoint in checkpoints]
        if numbers[0] < self._start:
            return 0
        if not tracker.admit_run(numbers, [size for _, size in taken]):
            return 0
        self.processor.queue.put_run(list(zip(numbers, checkpoints, strict=True)))
        return len(taken)

    async def submit(self, checkpoint: Any, size: int) -> None:
        """Admit one checkpoint (waiting for room), run the preprocess hook, dispatch it."""
        sequence_number = checkpoint.sequence_number
        if sequence_number < self._start or self.error is not None:
            return
        await self.tracker.admit(sequence_number, size)
        self._dispatch(sequence_number, checkpoint)

    def _dispatch(self, sequence_number: int, checkpoint: Any) -> None:
        if self._hooked:
            try:
                self.pool.worker.preprocess_hook(checkpoint)
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

    # -- completions -------------------------------------------------------------------------

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

    # -- the end -----------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop taking checkpoints: running calls finish, retries and queued ones are dropped."""
        self._stopping.set()
        self._settled.set()

    async def finish(self, drain: bool) -> int:
        """End the run; with ``drain`` every admitted checkpoint is processed first.

        Returns the saved watermark."""
        if self.pruner is not None:  # a prune is background work: it does not delay the end
            await self.pruner.close()
        if drain and self.tracker.incomplete and self.error is None:
            self._settled.clear()
            if self.tracker.incomplete and not self._stopping.is_set():
                await self._settled.wait()
        if self.error is not None or not drain:
            self._stopping.set()
        await self.processor.shutdown()
        self.committer.close()
        if self._committer_task is not None:
            await asyncio.wait([self._committer_task])
        await self.stall.close()
        await self._close_reducer()
        return self.committer.saved

    async def abort(self) -> None:
        """Cancel everything at once (a second stop signal)."""
        self._stopping.set()
        self.stall.abort()
        if self.pruner is not None:
            await self.pruner.close()
        await self.processor.abort()
        if self._committer_task is not None:
            self._committer_task.cancel()
            await asyncio.wait([self._committer_task])
        await self._close_reducer()

    async def _close_reducer(self) -> None:
        if self.pool.reducer is not None:
            await self.pool.reducer.close()

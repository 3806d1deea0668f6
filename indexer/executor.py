"""IndexerExecutor: the run of every registered pipeline over one feed, and its lifecycle."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from ._gc import tuned_gc
from ._log import log
from ._signals import TwoSignalStop
from .checkpoint import CheckpointDecoder
from .claims.lease import default_owner
from .cohorts import DEFAULT_COHORT_BYTES, DEFAULT_COHORT_DISTANCE, CohortReader
from .errors import ConfigurationError, FeedEndedEarly, ShutdownAborted
from .pipeline import PipelineRun, WorkerPool
from .progress import MemoryProgressStore, ProgressStore
from .sources import CheckpointSource, SourcedBatch
from .stats import FeedStats, JobView

__all__ = ["IndexerExecutor", "check_range", "poll_feed"]


def check_range(first: int | None, last: int | None) -> None:
    """Refuse a first or last checkpoint that is negative, or a last below the first."""
    for key, value in (("first_checkpoint", first), ("last_checkpoint", last)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 0
        ):
            raise ConfigurationError(f"must be a non-negative integer, got {value!r}", key=key)
    if first is not None and last is not None and last < first:
        raise ConfigurationError(
            f"({last}) is below first_checkpoint ({first})", key="last_checkpoint"
        )


class IndexerExecutor:
    """Runs registered pipelines over one checkpoint source.

    Each pipeline starts at its saved watermark; pipelines close together read the feed once,
    pipelines far apart each on their own (``CohortReader``), so none waits for a slower one.
    ``run`` returns each pipeline's final watermark. The first SIGINT or
    SIGTERM (or ``request_stop``) stops reading, lets running calls finish, flushes reducers and
    saves watermarks; a second one aborts at once (``ShutdownAborted``) without corrupting the
    progress store. ``job`` is what the metrics endpoint and the progress bars read: each
    pipeline's counters and run in progress, and what the reader saw of the feed; pass one in to
    share it across executors (a chunked job's do).

    A run is the one writer of its pipelines (``ProgressStore.hold``): on a database store it
    leases each for ``lease_ttl`` seconds as ``owner`` (``host:pid`` by default), renews the
    leases on a heartbeat and fences every commit with them; a second run of a held pipeline
    refuses at start (``PipelineHeld``), and one that loses its lease commits nothing more.
    """

    def __init__(
        self,
        progress_store: ProgressStore | None = None,
        *,
        handle_signals: bool = True,
        tune_gc: bool = True,
        prune_interval: float = 1.0,
        feed_poll_interval: float | None = 5.0,
        timing: bool = True,
        job: JobView | None = None,
        lease_ttl: float = 30.0,
        owner: str | None = None,
        cohort_distance: int = DEFAULT_COHORT_DISTANCE,
        cohort_bytes: int = DEFAULT_COHORT_BYTES,
        retention: bool = True,
    ) -> None:
        self.progress_store = (
            progress_store if progress_store is not None else MemoryProgressStore()
        )
        self.handle_signals = handle_signals
        self.tune_gc = tune_gc
        self.prune_interval = prune_interval
        self.feed_poll_interval = feed_poll_interval
        #: Time each process_checkpoint call for indexer_checkpoint_processing_seconds.
        self.timing = timing
        self.job = job if job is not None else JobView()
        self.lease_ttl = lease_ttl
        self.owner = owner or default_owner()
        for key, value in (("cohort_distance", cohort_distance), ("cohort_bytes", cohort_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"must be a positive integer, got {value!r}", key=key)
        #: How far apart (in checkpoints) pipelines may be and still read the feed once, and
        #: the most encoded bytes a cohort keeps for its members behind (``indexer.cohorts``).
        self.cohort_distance = cohort_distance
        self.cohort_bytes = cohort_bytes
        #: Whether pipelines with a ``retention`` prune in this run (a chunked job's runner
        #: prunes them instead, by the job's watermark).
        self.retention = retention
        self._pools: dict[str, WorkerPool[Any, Any]] = {}
        self._stop: asyncio.Event | None = None  # created inside run (needs a running loop)
        self._signals = TwoSignalStop(
            "stopping: finishing in-flight work (signal again to abort)", self.request_stop
        )

    @property
    def pools(self) -> list[WorkerPool[Any, Any]]:
        """The registered pipelines, in the order of registration."""
        return list(self._pools.values())

    def register(self, pool: WorkerPool[Any, Any]) -> None:
        """Add a pipeline; names must be unique."""
        if pool.name in self._pools:
            raise ConfigurationError(f"a pipeline named {pool.name!r} is already registered")
        self._pools[pool.name] = pool
        self.job.pipeline(pool.name)

    def request_stop(self) -> None:
        """Ask a running ``run`` to stop gracefully (what the first signal does)."""
        if self._stop is not None:
            self._stop.set()

    async def run(
        self,
        source: CheckpointSource,
        first_checkpoint: int | None = None,
        last_checkpoint: int | None = None,
    ) -> dict[str, int]:
        """Process checkpoints until ``last_checkpoint`` (inclusive), the end of a finite
        source, or a stop; returns ``{pipeline: watermark}`` (next checkpoint not committed).

        A finite source that ends before ``last_checkpoint`` raises ``FeedEndedEarly``, naming
        the first checkpoint it did not deliver, once everything read is committed."""
        pools = self._validate(first_checkpoint, last_checkpoint)
        decoder = CheckpointDecoder(pools[0].checkpoint_type)
        store = self.progress_store
        opened_here = not store.is_open
        await store.open()
        self._stop = asyncio.Event()
        self.job.loop = asyncio.get_running_loop()
        names = [pool.name for pool in pools]
        try:
            with self._signals.handling(self.handle_signals), tuned_gc(self.tune_gc):
                async with store.hold(
                    names, owner=self.owner, ttl=self.lease_ttl, on_lost=self._lease_lost
                ) as writable:
                    return await self._run(
                        writable, source, decoder, pools, first_checkpoint, last_checkpoint
                    )
        finally:
            if opened_here:
                await store.close()

    def _validate(self, first: int | None, last: int | None) -> list[WorkerPool[Any, Any]]:
        if not self._pools:
            raise ConfigurationError(
                "no pipelines registered: call register(WorkerPool(...)) before run()"
            )
        check_range(first, last)
        pools = list(self._pools.values())
        types = {pool.checkpoint_type for pool in pools}
        if len(types) > 1:
            described = ", ".join(f"{p.name}: {p.checkpoint_type.__name__}" for p in pools)
            raise ConfigurationError(
                f"pipelines sharing one executor must read one checkpoint type ({described})"
            )
        return pools

    async def _run(
        self,
        store: ProgressStore,
        source: CheckpointSource,
        decoder: CheckpointDecoder[Any],
        pools: list[WorkerPool[Any, Any]],
        first: int | None,
        last: int | None,
    ) -> dict[str, int]:
        starts: dict[str, int] = {}
        for pool in pools:
            saved = await store.load(pool.name)
            starts[pool.name] = saved if saved is not None else (first or 0)
            self.job.pipeline(pool.name).rests_at(starts[pool.name])
            log.info(
                "pipeline starting",
                pipeline=pool.name,
                resume_from=starts[pool.name],
                saved_watermark=saved,
                concurrency=pool.concurrency,
                event_loop=type(asyncio.get_running_loop()).__module__.partition(".")[0],
            )
        active = [pool for pool in pools if last is None or starts[pool.name] <= last]
        if not active:
            log.info("nothing to do: every pipeline is past last_checkpoint", last=last)
            return starts
        runs = [
            PipelineRun(
                pool,
                store,
                starts[pool.name],
                stats=self.job.pipeline(pool.name).stats,
                on_halt=self._on_halt,
                timed=self.timing,
                prune=self.retention,
            )
            for pool in active
        ]
        started: list[PipelineRun] = []
        try:
            for run in runs:
                run.start_tasks()
                started.append(run)
                self.job.pipeline(run.name).attach(run)
            watermarks = await self._drive(source, decoder, runs, last)
            return {**starts, **watermarks}
        except asyncio.CancelledError:
            for run in started:
                await run.abort()
            if self._signals.aborted:
                marks = {**starts, **{run.name: run.watermark for run in runs}}
                log.warning("aborted by a second signal", watermarks=marks)
                raise ShutdownAborted("aborted by a second stop signal") from None
            raise
        finally:
            for run in started:
                self.job.pipeline(run.name).detach()

    async def _drive(
        self,
        source: CheckpointSource,
        decoder: CheckpointDecoder[Any],
        runs: list[PipelineRun],
        last: int | None,
    ) -> dict[str, int]:
        """Read until done or stopped, then end every run; their saved watermarks."""
        assert self._stop is not None

        def open_stream(start: int) -> AsyncIterator[SourcedBatch]:
            if last is None:
                return source.stream(start, decoder)
            return source.stream_to(start, last, decoder)

        cohorts = CohortReader(
            open_stream,
            runs,
            last,
            job=self.job,
            distance=self.cohort_distance,
            max_bytes=self.cohort_bytes,
        )
        reader = asyncio.create_task(cohorts.run(), name="reader")
        stopper = asyncio.create_task(self._stop.wait(), name="stop")
        pruner = asyncio.create_task(self._prune(source, runs), name="prune")
        poller = asyncio.create_task(self._poll_feed(source), name="feed")
        try:
            await asyncio.wait([reader, stopper], return_when=asyncio.FIRST_COMPLETED)
            if not reader.done():
                reader.cancel()
            await asyncio.wait([reader])
            reader_error = None if reader.cancelled() else reader.exception()
            drain = not self._stop.is_set()
            if reader_error is not None:
                log.error("reading stopped", error=str(reader_error))
            for run in runs:
                if not drain:
                    run.request_stop()
            finishing: asyncio.Future[Any] = asyncio.gather(*(run.finish(drain) for run in runs))
            stopping: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait([finishing, stopping], return_when=asyncio.FIRST_COMPLETED)
            if not finishing.done():  # a stop arrived while draining
                for run in runs:
                    run.request_stop()
            await finishing
            stopping.cancel()
        finally:
            for task in (reader, stopper, pruner, poller):
                task.cancel()
        watermarks = {run.name: run.watermark for run in runs}
        await source.prune(min(watermarks.values()))
        log.info("stopped", watermarks=watermarks)
        if reader_error is not None:
            raise reader_error
        halted = [run.error for run in runs if run.error is not None]
        if halted:
            if isinstance(halted[0].__cause__, ConfigurationError):  # exit code 2, not 1
                raise ConfigurationError(str(halted[0])) from halted[0]
            raise halted[0]
        if last is not None and not self._stop.is_set() and min(watermarks.values()) <= last:
            # Not stopped and everything read drained: the source ended before ``last``, and
            # the lowest watermark is the first checkpoint it did not deliver.
            raise FeedEndedEarly(min(watermarks.values()), last, watermarks)
        return watermarks

    async def _prune(self, source: CheckpointSource, runs: list[PipelineRun]) -> None:
        pruned = -1
        while True:
            await asyncio.sleep(self.prune_interval)
            lowest = min(run.watermark for run in runs)
            if lowest > pruned:
                await source.prune(lowest)
                pruned = lowest

    async def _poll_feed(self, source: CheckpointSource) -> None:
        if self.feed_poll_interval is not None:
            await poll_feed(source, self.job.feed, self.feed_poll_interval)

    def _on_halt(self, run: PipelineRun) -> None:
        self.request_stop()

    def _lease_lost(self, pipeline: str, reason: str) -> None:
        """Another writer took a pipeline over: stop (its commits are refused already)."""
        log.error("lease lost: stopping", pipeline=pipeline, reason=reason)
        self.request_stop()


async def poll_feed(source: CheckpointSource, feed: FeedStats, interval: float) -> None:
    """Track the feed's newest checkpoint in ``feed`` (for lag) and whether it can be read
    (for ``/readyz``) every ``interval`` seconds, and log when the reader catches up; runs
    until cancelled."""
    caught_up = False
    while True:
        try:
            latest = await source.latest_sequence_number()
            feed.problem = await source.unreadable()
        except Exception as exc:  # the reader meets it too, and says so
            latest, feed.problem = None, str(exc) or repr(exc)
        if latest is not None:
            feed.latest = max(latest, feed.latest or 0)
        behind = feed.latest is not None and (feed.last_read or -1) < feed.latest
        if not behind and feed.last_read is not None and not caught_up:
            log.info("caught up with the feed", latest=feed.latest, last_read=feed.last_read)
        caught_up = not behind and feed.last_read is not None
        await asyncio.sleep(interval)

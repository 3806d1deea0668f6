"""ChunkedRunner: one process's share of a job cut into leased chunks.

The checkpoint range from ``first`` on is cut into chunks of ``chunk_size``. The runner claims
the lowest available chunk, runs the pipeline over it with its own executor (the chunk's
progress fenced by the lease), renews the lease on a heartbeat, and releases the chunk as done.
It goes on until every chunk up to ``last`` is done (waiting for other processes' chunks, and
taking over any whose lease expires), or until it is stopped. After each chunk the pipeline's
watermark is raised to the contiguous prefix of completed work. A pipeline with a retention is
pruned here, below that job-wide watermark (a chunk's run knows only its chunk): every process
of the job prunes, each skipping what another already did.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from functools import partial
from typing import Any

from .._gc import tuned_gc
from .._log import log
from .._signals import TwoSignalStop
from ..claims import ChunkLayout, Claim, ClaimStore
from ..claims.lease import (
    check_chunking,
    check_no_whole_writer,
    default_owner,
    heartbeat_of,
    keep_alive,
)
from ..errors import ConfigurationError, FeedEndedEarly, FencingError, ShutdownAborted
from ..executor import IndexerExecutor, check_range, poll_feed
from ..pipeline import WorkerPool
from ..pipeline.pruner import RetentionPruner
from ..progress import ProgressStore
from ..retry import sleep_unless_set
from ..sources import CheckpointSource
from ..stats import JobView, PipelineView
from .job_watermark import JobWatermarkWatcher, job_watermark
from .progress import ChunkProgressStore

__all__ = ["ChunkedRunner", "check_chunking"]


def _job_watermark_of(view: PipelineView) -> int:
    """The job-wide watermark ``view`` holds (0 before it is known)."""
    return view.job_watermark or 0


#: Seconds between two looks, at the start, for the first file a chunk has read.
_FIRST_READ_CHECK = 0.01


class ChunkedRunner:
    """Runs ``pools`` chunk by chunk under leases from ``claims``; see the module docstring.

    ``source_factory`` makes the source, once per ``run``, read again from each chunk's start
    (sources are restartable); ``on_signal`` is told of every stop signal the runner gets (the
    parent of ``--processes N`` passes them on to its children). Pipelines are claimed and run one
    chunk at a time each (they do not share a reader in this mode). ``run`` returns each
    pipeline's watermark as the store holds it at the end. ``tune_gc`` applies the
    garbage-collector settings of ``indexer._gc`` for the whole run, as IndexerExecutor does.
    """

    def __init__(
        self,
        progress_store: ProgressStore,
        claims: ClaimStore,
        pools: list[WorkerPool[Any, Any]],
        source_factory: Callable[[], CheckpointSource],
        *,
        chunk_size: int,
        lease_ttl: float = 30.0,
        owner: str | None = None,
        poll_interval: float | None = None,
        handle_signals: bool = True,
        timing: bool = True,
        tune_gc: bool = True,
        on_signal: Callable[[int], None] | None = None,
        job: JobView | None = None,
        feed_poll_interval: float = 5.0,
    ) -> None:
        check_chunking(chunk_size, lease_ttl)
        if not pools:
            raise ConfigurationError("no pipelines to run")
        self.progress_store = progress_store
        self.claims = claims
        self.pools = pools
        self.source_factory = source_factory
        self.chunk_size = chunk_size
        self.lease_ttl = lease_ttl
        self.owner = owner or default_owner()
        self.heartbeat = heartbeat_of(lease_ttl)
        self.poll_interval = (
            poll_interval if poll_interval is not None else min(self.heartbeat, 0.1)
        )
        self.handle_signals = handle_signals
        self.timing = timing
        self.tune_gc = tune_gc
        #: What the metrics endpoint and the progress bars read, across every chunk's run.
        self.job = job if job is not None else JobView()
        for pool in pools:
            self.job.pipeline(pool.name)
        self.feed_poll_interval = feed_poll_interval
        self.chunks_done = 0
        self.chunks_abandoned = 0
        self._stop = asyncio.Event()
        self._signals = TwoSignalStop(
            "stopping: finishing the chunk in hand (signal again to abort)",
            self.request_stop,
            forward=on_signal,
        )
        self._current: IndexerExecutor | None = None
        self._ensured: dict[str, int] = {}  # chunk rows known to exist, per pipeline
        self._shared_source: CheckpointSource | None = None

    def request_stop(self) -> None:
        """Finish the chunk in hand gracefully (its progress is saved) and claim no more."""
        self._stop.set()
        if self._current is not None:
            self._current.request_stop()

    async def run(self, first: int | None = None, last: int | None = None) -> dict[str, int]:
        """Work through the job until every chunk up to ``last`` is done (forever when ``last``
        is None) or until stopped; return each pipeline's watermark."""
        check_range(first, last)
        self.job.loop = asyncio.get_running_loop()
        poller: asyncio.Task[None] | None = None
        watching: asyncio.Task[None] | None = None
        pruners: list[RetentionPruner] = []
        await self._open_stores()
        try:
            layouts = {pool.name: await self._layout(pool.name, first) for pool in self.pools}
            for pool in self.pools:
                await check_no_whole_writer(self.claims, pool.name)
            poller = asyncio.create_task(self._poll_feed(), name="feed")
            watcher = JobWatermarkWatcher(self.claims, self.progress_store, self.job, layouts, last)
            await watcher.refresh()  # the job's watermark is shown from the start
            watching = asyncio.create_task(watcher.run(), name="job-watermark")
            pruners = self._pruners()
            for pruner in pruners:
                pruner.start()
            with self._signals.handling(self.handle_signals), tuned_gc(self.tune_gc):
                while not self._stop.is_set():
                    progressed = False
                    for pool in self.pools:
                        if self._stop.is_set():
                            break
                        progressed |= await self._step(pool, layouts[pool.name], last)
                    if progressed:
                        continue  # the next round claims, or finds nothing and looks further
                    if await self._all_done(layouts, last):
                        break
                    await sleep_unless_set(self._stop, self.poll_interval)
            return {
                name: await self._update_watermark(name, layout, last)
                for name, layout in layouts.items()
            }
        except asyncio.CancelledError:
            if self._signals.aborted:
                raise ShutdownAborted("aborted by a second stop signal") from None
            raise
        finally:
            for pruner in pruners:
                await pruner.close()
            for task in (poller, watching):
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            if self._shared_source is not None:
                source, self._shared_source = self._shared_source, None
                await source.close()
            await self.claims.close()
            await self.progress_store.close()

    async def _open_stores(self) -> None:
        """Open the progress store and the claim store together (each connects and checks
        its tables); if either fails, close both and raise its error."""
        opened = await asyncio.gather(
            self.progress_store.open(), self.claims.open(), return_exceptions=True
        )
        failed = [error for error in opened if isinstance(error, BaseException)]
        if failed:
            await asyncio.gather(
                self.claims.close(), self.progress_store.close(), return_exceptions=True
            )
            raise failed[0]

    def _pruners(self) -> list[RetentionPruner]:
        """A pruner for each pipeline with a retention, below the job's watermark."""
        pruners = []
        for pool in self.pools:
            if pool.retention is None or pool.reducer is None:
                continue
            view = self.job.pipeline(pool.name)
            pruners.append(
                RetentionPruner(
                    pool.name,
                    pool.reducer,
                    self.progress_store,
                    retention=pool.retention,
                    interval=pool.retention_interval,
                    watermark=partial(_job_watermark_of, view),
                    stats=view.stats,
                )
            )
        return pruners

    async def _layout(self, pipeline: str, first: int | None) -> ChunkLayout:
        """The pipeline's chunk layout: the recorded one, or this run's (from ``first``, else
        from the pipeline's saved watermark) recorded now. A different chunk size, or a
        different explicit first checkpoint, is refused: the stored chunk states would then
        stand for other checkpoints."""
        start = first if first is not None else (await self.progress_store.load(pipeline) or 0)
        wanted = ChunkLayout(start, self.chunk_size)
        layout = await self.claims.adopt_layout(pipeline, wanted)
        if layout.chunk_size != self.chunk_size or (first is not None and layout.first != first):
            raise ConfigurationError(
                f"pipeline {pipeline!r} is already cut into chunks of {layout.chunk_size} "
                f"from checkpoint {layout.first} in the claim store; this run asks for chunks "
                f"of {self.chunk_size} from {start}: run with the same scale.chunk_size and "
                "first checkpoint, or `indexer reset` the pipeline first"
            )
        return layout

    async def _poll_feed(self) -> None:
        """The feed poller (for lag), once the first chunk has read a file (or after one
        interval): a look before any file is read has nothing to probe forward from and lists
        the whole feed, which cost every process of a job over 100,000 files about 0.2 s of
        CPU as it started."""
        feed, waited = self.job.feed, 0.0
        while feed.last_read is None and waited < self.feed_poll_interval:
            await asyncio.sleep(_FIRST_READ_CHECK)
            waited += _FIRST_READ_CHECK
        await poll_feed(self._source(), feed, self.feed_poll_interval)

    def _source(self) -> CheckpointSource:
        if self._shared_source is None:
            self._shared_source = self.source_factory()
        return self._shared_source

    # -- one chunk ----------------------------------------------------------------------------

    async def _step(
        self, pool: WorkerPool[Any, Any], layout: ChunkLayout, last: int | None
    ) -> bool:
        """Claim and run one chunk of ``pool``'s pipeline; False when none was available."""
        total = await self._chunk_count(layout, last)
        if total <= 0:
            return False
        if total > self._ensured.get(pool.name, 0):
            await self.claims.ensure_chunks(pool.name, total)
            self._ensured[pool.name] = total
        if not await self.claims.find_available(pool.name, 1, range(0, total)):
            return False  # a read, so that idle processes polling take no write lock
        claim = await self.claims.claim_next(pool.name, self.owner, self.lease_ttl, range(0, total))
        if claim is None:
            return False
        start, whole_end = layout.bounds(claim.chunk)
        end = whole_end if last is None else min(whole_end, last)
        # A chunk cut short by ``last`` is not done: a later run with a higher last goes on in it.
        complete = end == whole_end
        saved = await self.progress_store.load(pool.name) or 0
        progress = await self.claims.progress(pool.name, claim.chunk) or 0
        if max(saved, progress) > end:
            # Done already: before chunking, by a run that saved the pipeline's watermark, or
            # up to ``last`` (then False: nothing was done, wait instead of claiming it again).
            if progress <= end:
                await self.claims.save_progress(claim, end + 1)
            await self.claims.release(claim, done=complete)
            return complete
        floor = max(start, saved)
        log.info(
            "chunk claimed",
            pipeline=pool.name,
            chunk=claim.chunk,
            checkpoints=f"{start}..{end}",
            token=claim.token,
            owner=self.owner,
        )
        store = ChunkProgressStore(self.progress_store, self.claims, claim, floor)
        executor = IndexerExecutor(
            store,
            handle_signals=False,
            timing=self.timing,
            tune_gc=False,
            feed_poll_interval=None,  # the runner polls the feed once for all chunks
            job=self.job,
            retention=False,  # the runner prunes, by the job's watermark
        )
        executor.register(pool)
        lost = asyncio.Event()
        heartbeat = asyncio.create_task(self._renew(claim, executor, lost), name="heartbeat")
        watcher = asyncio.create_task(
            self._say_when_waiting(pool.name, claim.chunk, floor, end), name="feed-wait"
        )
        source = self._source()
        self._current = executor
        ended: FeedEndedEarly | None = None
        try:
            marks = await executor.run(source, first_checkpoint=start, last_checkpoint=end)
        except FeedEndedEarly as exc:  # what was read is committed; the chunk is not done
            ended, marks = exc, exc.watermarks
        except Exception as exc:
            # A halt on a refused commit is the fence working: nothing of it was committed.
            if lost.is_set() or isinstance(exc.__cause__, FencingError):
                log.warning("chunk abandoned: lease lost", pipeline=pool.name, chunk=claim.chunk)
                self.chunks_abandoned += 1
                return True
            raise
        finally:
            self._current = None
            heartbeat.cancel()
            watcher.cancel()
            await asyncio.gather(heartbeat, watcher, return_exceptions=True)
        if lost.is_set():
            self.chunks_abandoned += 1
            return True
        if marks[pool.name] > end and complete:
            with contextlib.suppress(FencingError):
                await self.claims.release(claim, done=True)
                self.chunks_done += 1
                log.info("chunk done", pipeline=pool.name, chunk=claim.chunk)
        else:  # stopped part-way, at ``last`` or at the feed's end: the progress stays
            with contextlib.suppress(FencingError):
                await self.claims.release(claim)
        watermark = await self._update_watermark(pool.name, layout, last)
        if ended is None:
            return True
        # A finite feed ended inside the chunk. Short of ``last`` that is the job's failure
        # (claiming the chunk again would only end there again); in an open-ended job it is
        # the job's end, as for a run without chunks: this process claims no more.
        if last is not None:
            where = f"chunk {claim.chunk}, checkpoints {start}..{end}, of pipeline {pool.name!r}"
            raise FeedEndedEarly(ended.missing, last, {pool.name: watermark}, where)
        log.info(
            "the feed ended: claiming no more chunks", pipeline=pool.name, missing=ended.missing
        )
        self._stop.set()
        return True

    async def _renew(self, claim: Claim, executor: IndexerExecutor, lost: asyncio.Event) -> None:
        """Keep the chunk's lease alive; stop the chunk when it is lost."""

        def abandon(reason: str) -> None:
            log.warning("lease lost, abandoning the chunk", chunk=claim.chunk, reason=reason)
            lost.set()
            executor.request_stop()

        stats = self.job.pipeline(claim.pipeline).stats

        def failed() -> None:
            stats.lease_renewal_failures += 1

        await keep_alive(self.claims, claim, self.lease_ttl, abandon, on_failure=failed)

    async def _say_when_waiting(self, pipeline: str, chunk: int, floor: int, end: int) -> None:
        """Log once when the chunk has committed all the feed holds of it and waits for
        checkpoints the feed does not hold yet (a last checkpoint past its end, or its live
        head): a job waiting for them would otherwise say nothing at all."""
        view, feed = self.job.pipeline(pipeline), self.job.feed
        while True:
            await asyncio.sleep(self.poll_interval)
            # The view shows this chunk's run once it started (before, another run's mark).
            needed = view.watermark if floor <= view.watermark <= end else floor
            known = feed.latest  # the feed poller's, which may be a few seconds old
            if known is None or needed <= known:
                continue  # a feed that does not tell, or one that holds it: not waiting
            latest = await self._source().latest_sequence_number()
            if latest is None:
                continue
            feed.latest = max(latest, known)
            if needed <= latest:
                continue
            log.info(
                "waiting for checkpoints not in the feed yet",
                pipeline=pipeline,
                chunk=chunk,
                waiting_for=needed,
                feed_latest=latest,
                chunk_last=end,
            )
            return

    # -- the job as a whole ---------------------------------------------------------------------

    async def _chunk_count(self, layout: ChunkLayout, last: int | None) -> int:
        """How many chunks the job has: up to ``last``, or up to the feed's newest checkpoint
        plus one chunk to tail into when the job is open-ended."""
        if last is not None:
            return layout.chunk_of(last) + 1 if last >= layout.first else 0
        latest = await self._source().latest_sequence_number()
        if latest is None or latest < layout.first:
            return 1
        return layout.chunk_of(latest) + 2

    async def _all_done(self, layouts: dict[str, ChunkLayout], last: int | None) -> bool:
        if last is None:
            return False
        for name, layout in layouts.items():
            if await self._watermark(name, layout, last) <= last:
                return False
        return True

    async def _watermark(self, pipeline: str, layout: ChunkLayout, last: int | None) -> int:
        return await job_watermark(self.claims, self.progress_store, pipeline, layout, last)

    async def _update_watermark(self, pipeline: str, layout: ChunkLayout, last: int | None) -> int:
        """Raise the pipeline's saved watermark to its contiguous completed prefix."""
        saved = await self.progress_store.save(
            pipeline, await self._watermark(pipeline, layout, last)
        )
        view = self.job.pipeline(pipeline)
        view.job_watermark = max(saved, view.job_watermark or 0)
        JobWatermarkWatcher.stamp(view)
        return saved

"""What a job counts as it runs, kept as plain attributes: a processed checkpoint costs a few
increments, not a lock per metric. The metrics endpoint, the progress bars and the closing
summary read it through a ``JobView``: per pipeline its counters and the run in progress,
and what the reader saw of the feed. A view lives as long as the job in this process, across
the runs of its pipelines (one per chunk in a chunked job).
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

__all__ = [
    "CheckpointTimes",
    "CohortStats",
    "FeedStats",
    "Histogram",
    "JobView",
    "PipelineStats",
    "PipelineView",
]

SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
MESSAGES_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
#: Why a remote feed's request was retried (``indexer_feed_fetch_retries_total{reason}``): no
#: connection, no answer in time, HTTP 408, 429 or 5xx, a body cut short, a body that does
#: not decode.
FETCH_RETRY_REASONS = (
    "connect",
    "timeout",
    "http_408",
    "http_429",
    "http_5xx",
    "short_body",
    "decode",
)
#: Commits whose watermark and timestamp a pipeline's stats remember.
RECENT_STAMPS = 1024
#: A chunk's states in ``indexer_chunks{state}``: completed, held by a live lease, neither.
CHUNK_STATES = ("done", "leased", "pending")


class Histogram:
    """A fixed-bucket histogram: one bisect and two additions per observation."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)


class PipelineStats:
    """Counters one pipeline updates as it runs; read by the collector, the CLI and tests."""

    __slots__ = (
        "batch_messages",
        "batches_committed",
        "batches_failed",
        "commit_retries",
        "commit_seconds",
        "committed_at",
        "dead_letters",
        "lease_renewal_failures",
        "processed",
        "processing_seconds",
        "pruned_below",
        "queue_wait_seconds",
        "recent_stamps",
        "retries",
        "store_retries",
        "watermark_timestamp_ms",
    )

    def __init__(self) -> None:
        #: Wall clock (``time.time()``) of the last raise of the saved watermark; None before.
        self.committed_at: float | None = None
        #: ``timestamp_ms`` of the newest committed checkpoint (the saved watermark's one
        #: below), None until a run commits one whose timestamp it read.
        self.watermark_timestamp_ms: int | None = None
        #: ``(saved watermark, timestamp_ms of the checkpoint below it)`` of the latest
        #: commits: where a chunked job finds the timestamp at its own watermark.
        self.recent_stamps: deque[tuple[int, int]] = deque(maxlen=RECENT_STAMPS)
        self.processed = 0
        #: The pruned-below mark of a pipeline with a retention (``indexer_pruned_below``):
        #: its sink holds no rows of checkpoints below it. None without one.
        self.pruned_below: int | None = None
        #: Retries by reason (``indexer_retries_total{reason}``): failed process_checkpoint
        #: calls retried ("checkpoint"), failed reducer commits retried ("commit"), failed
        #: progress-store writes retried: watermark saves, dead letters ("watermark").
        self.retries = 0
        self.commit_retries = 0
        self.store_retries = 0
        self.dead_letters = 0
        self.batches_committed = 0
        self.batches_failed = 0
        #: Lease renewals of this pipeline's chunks that failed (retried, or the lease lost).
        self.lease_renewal_failures = 0
        self.processing_seconds = Histogram(SECONDS_BUCKETS)
        #: From a checkpoint's admission into the window to a worker task taking it up
        #: (sampled: one checkpoint in ``processor.QUEUE_WAIT_SAMPLE``).
        self.queue_wait_seconds = Histogram(SECONDS_BUCKETS)
        self.commit_seconds = Histogram(SECONDS_BUCKETS)
        self.batch_messages = Histogram(MESSAGES_BUCKETS)


class FeedStats:
    """What the reader saw of the feed (every cohort together)."""

    __slots__ = (
        "bytes_read",
        "checkpoints_read",
        "fetch_retries",
        "last_read",
        "latest",
        "problem",
    )

    def __init__(self) -> None:
        self.bytes_read = 0
        #: Checkpoints read from the feed: as many as were processed when pipelines that run
        #: together read it once, more when cohorts far apart read the same ones.
        self.checkpoints_read = 0
        self.latest: int | None = None  # newest checkpoint the feed holds, when known
        self.last_read: int | None = None
        #: A remote feed's requests retried, by reason (``indexer_feed_fetch_retries_total``).
        self.fetch_retries: dict[str, int] = dict.fromkeys(FETCH_RETRY_REASONS, 0)
        #: Why the feed cannot be read now, as the feed poller last found (None: it can).
        self.problem: str | None = None


class CohortStats:
    """What one cohort (pipelines sharing one read of the feed) read, and who is in it."""

    __slots__ = ("bytes_read", "checkpoints_read", "number", "pipelines", "position")

    def __init__(self, number: int, position: int) -> None:
        self.number = number
        #: The next checkpoint this cohort reads.
        self.position = position
        self.pipelines: tuple[str, ...] = ()
        self.checkpoints_read = 0
        self.bytes_read = 0


class CheckpointTimes:
    """The ``timestamp_ms`` of the checkpoints one run read that not every pipeline has
    committed yet: the reader adds each batch's (one attribute read per checkpoint) and drops
    those below the lowest saved watermark; a committer looks up the one below the watermark it
    just saved. Checkpoints of a type without ``timestamp_ms`` turn it off."""

    __slots__ = ("_firsts", "_stamps", "enabled")

    def __init__(self) -> None:
        self._firsts: deque[int] = deque()  # each batch's first sequence number, rising
        self._stamps: deque[list[int]] = deque()  # each batch's timestamps, in order
        self.enabled = True

    def add(self, batch: Sequence[tuple[Any, int]], lowest: int) -> None:
        """Keep the timestamps of ``batch`` (consecutive ``(checkpoint, size)`` pairs), and
        drop the batches wholly below ``lowest`` (the lowest saved watermark)."""
        if not self.enabled or not batch:
            return
        try:
            stamps = [checkpoint.timestamp_ms for checkpoint, _ in batch]
        except AttributeError:  # a checkpoint type without timestamps
            self.enabled = False
            self._firsts.clear()
            self._stamps.clear()
            return
        first = batch[0][0].sequence_number
        firsts = self._firsts
        if batch[-1][0].sequence_number - first == len(batch) - 1 and (
            not firsts or first >= firsts[-1] + len(self._stamps[-1])
        ):  # consecutive and after the last kept: a number is found by its offset
            firsts.append(first)
            self._stamps.append(stamps)
        while len(firsts) > 1 and firsts[1] <= lowest:
            firsts.popleft()
            self._stamps.popleft()

    def at(self, sequence_number: int) -> int | None:
        """The ``timestamp_ms`` of checkpoint ``sequence_number``, if kept."""
        firsts = self._firsts
        index = bisect_right(firsts, sequence_number) - 1
        if index < 0:
            return None
        stamps = self._stamps[index]
        offset = sequence_number - firsts[index]
        return stamps[offset] if offset < len(stamps) else None


class RunningPipeline(Protocol):
    """What a view reads of a pipeline's run in progress (``indexer.pipeline.PipelineRun``)."""

    @property
    def start(self) -> int: ...

    @property
    def watermark(self) -> int: ...

    @property
    def inflight(self) -> int: ...

    @property
    def error(self) -> BaseException | None: ...


class PipelineView:
    """One pipeline of a job: its counters, and its run in progress if any."""

    __slots__ = (
        "_error",
        "_last_watermark",
        "_start",
        "chunks",
        "chunks_at",
        "job_stamp",
        "job_start",
        "job_watermark",
        "name",
        "run",
        "run_start",
        "stats",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.stats = PipelineStats()
        #: In a chunked job: the pipeline's watermark (its contiguous completed chunks) as
        #: the claim store said last, ``(watermark, timestamp_ms)`` of the newest committed
        #: checkpoint this process knows at or below it, and the chunks by state (and when
        #: read). None, None, {} and None otherwise.
        self.job_watermark: int | None = None
        #: Where this process's job began: the first run's start, or in a chunked job the
        #: pipeline's watermark when the job started (for the progress bars); None before.
        self.run_start: int | None = None
        self.job_start: int | None = None
        self.job_stamp: tuple[int, int] | None = None
        self.chunks: dict[str, int] = {}
        self.chunks_at: float | None = None
        #: The run in progress; None before the first and between runs.
        self.run: RunningPipeline | None = None
        self._start = 0
        self._last_watermark = 0
        self._error: BaseException | None = None

    def attach(self, run: RunningPipeline) -> None:
        """A run of this pipeline starts."""
        self.run = run
        self._start = run.start
        if self.run_start is None:
            self.run_start = run.start

    def rests_at(self, watermark: int) -> None:
        """Show ``watermark`` (saved, or where a run would start) while no run is attached."""
        self._start = self._last_watermark = watermark
        if self.run_start is None:
            self.run_start = watermark

    def detach(self) -> None:
        """The run in progress ended; its final watermark stays shown."""
        if self.run is not None:
            self._last_watermark = self.run.watermark
            self._error = self._error or self.run.error
            self.run = None

    @property
    def error(self) -> BaseException | None:
        """Why a run of this pipeline in this process halted (None: it has not)."""
        run = self.run
        return self._error or (run.error if run is not None else None)

    @property
    def start(self) -> int:
        """Where the latest run started."""
        return self._start

    @property
    def watermark(self) -> int:
        """The saved watermark of the run in progress, else of the latest run."""
        run = self.run
        return run.watermark if run is not None else max(self._last_watermark, self._start)

    @property
    def inflight(self) -> int:
        """Checkpoints admitted but not committed by the run in progress."""
        run = self.run
        return run.inflight if run is not None else 0


class JobView:
    """The pipelines of a job in this process, in the order they were added, and the feed.

    ``loop`` is the event loop the job runs on (set when it starts): what changes the counters,
    so that a reader on another thread can ask it for a consistent look (``IndexerCollector``).
    """

    __slots__ = ("cohorts", "feed", "loop", "pipelines")

    def __init__(self) -> None:
        self.feed = FeedStats()
        self.pipelines: dict[str, PipelineView] = {}
        #: The cohorts reading the feed now, by number (``indexer.cohorts``).
        self.cohorts: dict[int, CohortStats] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    def pipeline(self, name: str) -> PipelineView:
        """The view of pipeline ``name``, added on first use."""
        view = self.pipelines.get(name)
        if view is None:
            view = self.pipelines[name] = PipelineView(name)
        return view

    @property
    def processed(self) -> int:
        """Checkpoints processed by every pipeline together."""
        return sum(view.stats.processed for view in self.pipelines.values())

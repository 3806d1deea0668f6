"""A job's numbers at one moment, as plain data.

The metrics endpoint, ``/readyz`` and the progress bars read a ``JobSnapshot`` rather than the
live counters: ``take_snapshot`` copies a ``JobView`` on its event loop (one moment of the run),
and a ``--processes`` child sends its snapshots to the parent, which ``merge``s them with its
own, so that one scrape of the parent's address shows the whole job.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import msgspec

from .stats import Histogram, JobView, PipelineView

__all__ = [
    "CohortSnapshot",
    "HistogramSnapshot",
    "JobSnapshot",
    "PipelineSnapshot",
    "merge",
    "take_snapshot",
]


class HistogramSnapshot(msgspec.Struct, array_like=True, frozen=True):
    """A fixed-bucket histogram's counts per bucket (the last is +Inf) and sum."""

    bounds: tuple[float, ...]
    counts: list[int]
    sum: float

    @classmethod
    def of(cls, histogram: Histogram) -> HistogramSnapshot:
        return cls(histogram.bounds, list(histogram.counts), histogram.sum)

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus buckets: ``(le, cumulative count)`` ending with ``+Inf``."""
        total = 0
        out: list[tuple[str, float]] = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return out

    def plus(self, other: HistogramSnapshot) -> HistogramSnapshot:
        counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        return HistogramSnapshot(self.bounds, counts, self.sum + other.sum)


#: The histograms of a pipeline, by the PipelineStats attribute that holds each.
HISTOGRAMS = ("processing_seconds", "queue_wait_seconds", "commit_seconds", "batch_messages")
#: The counters of a pipeline that add up across processes.
COUNTERS = (
    "processed",
    "dead_letters",
    "retries",
    "commit_retries",
    "store_retries",
    "batches_committed",
    "batches_failed",
    "lease_renewal_failures",
)


class PipelineSnapshot(msgspec.Struct, kw_only=True, frozen=True):
    """One pipeline in one process (or, merged, in the whole job).

    ``watermark`` is the pipeline's: in a chunked job the contiguous prefix of completed
    chunks, not the position of the chunk this process works on (``position``).
    ``watermark_timestamp_ms`` is the timestamp of the checkpoint below ``stamp_at`` (the
    watermark it was read at, at most ``watermark``)."""

    name: str
    #: Where the job began in this process (the merged: in the first of them); None before.
    start: int | None
    position: int
    watermark: int
    watermark_timestamp_ms: int | None = None
    stamp_at: int | None = None
    committed_at: float | None = None
    #: A pipeline with a retention: its sink holds no rows of checkpoints below this.
    pruned_below: int | None = None
    inflight: int = 0
    halted: str | None = None
    processed: int = 0
    dead_letters: int = 0
    retries: int = 0
    commit_retries: int = 0
    store_retries: int = 0
    batches_committed: int = 0
    batches_failed: int = 0
    lease_renewal_failures: int = 0
    #: Chunks of a chunked job by state (done, leased, pending), as the claim store said last.
    chunks: dict[str, int] = {}
    chunks_at: float | None = None
    histograms: dict[str, HistogramSnapshot] = {}


class CohortSnapshot(msgspec.Struct, kw_only=True, frozen=True):
    """Pipelines sharing one read of the feed (``indexer.cohorts``): what that read took.

    ``name`` is its number in its process (``"2"``), prefixed by the process in a
    ``--processes`` child's (``"1.2"``)."""

    name: str
    pipelines: tuple[str, ...]
    position: int
    checkpoints_read: int
    bytes_read: int


class JobSnapshot(msgspec.Struct, kw_only=True, frozen=True):
    """Every pipeline of one process (``process``: 0 the parent or a lone process, N the
    ``--processes`` child N; merged, ``processes`` lists them all) and its feed."""

    process: int = 0
    processes: tuple[int, ...] = (0,)
    taken_at: float
    pipelines: list[PipelineSnapshot]
    feed_bytes: int = 0
    feed_checkpoints: int = 0
    feed_last_read: int | None = None
    feed_latest: int | None = None
    #: Why the feed cannot be read now (a missing directory, failing requests), else None.
    feed_problem: str | None = None
    #: A remote feed's requests retried, by reason (``FeedStats.fetch_retries``).
    feed_fetch_retries: dict[str, int] = {}
    cohorts: list[CohortSnapshot] = []

    @property
    def feed_newest(self) -> int | None:
        """The feed's newest known checkpoint: the poller's (which sees past a gap the
        reader waits at) or the reader's, whichever is newer."""
        known = [n for n in (self.feed_latest, self.feed_last_read) if n is not None]
        return max(known) if known else None

    def pipeline(self, name: str) -> PipelineSnapshot | None:
        return next((p for p in self.pipelines if p.name == name), None)


def _pipeline(view: PipelineView) -> PipelineSnapshot:
    stats = view.stats
    job_mark = view.job_watermark
    position = view.watermark
    stamp_at: int | None
    stamp: int | None
    if job_mark is None:  # not chunked: this process's run is the pipeline's
        start, watermark = view.run_start, position
        stamp, stamp_at = stats.watermark_timestamp_ms, position
    else:
        start, watermark = view.job_start, job_mark
        stamp_at, stamp = view.job_stamp or (None, None)
    error = view.error
    counters = {name: getattr(stats, name) for name in COUNTERS}
    return PipelineSnapshot(
        name=view.name,
        start=start,
        position=position,
        watermark=watermark,
        watermark_timestamp_ms=stamp,
        stamp_at=stamp_at,
        committed_at=stats.committed_at,
        pruned_below=stats.pruned_below,
        inflight=view.inflight,
        halted=None if error is None else str(error),
        chunks=dict(view.chunks),
        chunks_at=view.chunks_at,
        histograms={name: HistogramSnapshot.of(getattr(stats, name)) for name in HISTOGRAMS},
        **counters,
    )


def take_snapshot(job: JobView, process: int = 0) -> JobSnapshot:
    """``job`` now; call it on the job's event loop, between two of its callbacks."""
    feed = job.feed
    return JobSnapshot(
        process=process,
        processes=(process,),
        taken_at=time.time(),
        pipelines=[_pipeline(view) for view in list(job.pipelines.values())],
        feed_bytes=feed.bytes_read,
        feed_checkpoints=feed.checkpoints_read,
        feed_last_read=feed.last_read,
        feed_latest=feed.latest,
        feed_problem=feed.problem,
        feed_fetch_retries=dict(feed.fetch_retries),
        cohorts=[
            CohortSnapshot(
                name=str(cohort.number) if not process else f"{process}.{cohort.number}",
                pipelines=cohort.pipelines,
                position=cohort.position,
                checkpoints_read=cohort.checkpoints_read,
                bytes_read=cohort.bytes_read,
            )
            for cohort in list(job.cohorts.values())
        ],
    )


def _newest(values: Sequence[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def _merge_pipeline(parts: list[PipelineSnapshot]) -> PipelineSnapshot:
    """One pipeline across processes: counters and histograms add up; the watermark is the
    highest any process read from the claim store (it only rises); its timestamp is the one
    read at the highest position not past it."""
    watermark = max(p.watermark for p in parts)
    stamped = [p for p in parts if p.stamp_at is not None and p.stamp_at <= watermark]
    stamp = max(stamped, key=lambda p: p.stamp_at or 0, default=None)
    chunked = [p for p in parts if p.chunks_at is not None]
    freshest = max(chunked, key=lambda p: p.chunks_at or 0.0, default=None)
    histograms: dict[str, HistogramSnapshot] = {}
    for part in parts:
        for name, histogram in part.histograms.items():
            held = histograms.get(name)
            histograms[name] = histogram if held is None else held.plus(histogram)
    halted = next((p.halted for p in parts if p.halted is not None), None)
    starts = [p.start for p in parts if p.start is not None]
    committed = [p.committed_at for p in parts if p.committed_at is not None]
    pruned = [p.pruned_below for p in parts if p.pruned_below is not None]
    return PipelineSnapshot(
        name=parts[0].name,
        start=min(starts) if starts else None,
        position=watermark,
        watermark=watermark,
        watermark_timestamp_ms=None if stamp is None else stamp.watermark_timestamp_ms,
        stamp_at=None if stamp is None else stamp.stamp_at,
        committed_at=max(committed) if committed else None,
        pruned_below=max(pruned) if pruned else None,
        inflight=sum(p.inflight for p in parts),
        halted=halted,
        chunks={} if freshest is None else dict(freshest.chunks),
        chunks_at=None if freshest is None else freshest.chunks_at,
        histograms=histograms,
        **{name: sum(getattr(p, name) for p in parts) for name in COUNTERS},
    )


def merge(snapshots: Sequence[JobSnapshot]) -> JobSnapshot:
    """The job as one snapshot: what one process shows when it speaks for several."""
    if len(snapshots) == 1:
        return snapshots[0]
    names: dict[str, list[PipelineSnapshot]] = {}
    for snapshot in snapshots:
        for part in snapshot.pipelines:
            names.setdefault(part.name, []).append(part)
    return JobSnapshot(
        process=snapshots[0].process,
        processes=tuple(sorted(p for s in snapshots for p in s.processes)),
        taken_at=max(s.taken_at for s in snapshots),
        pipelines=[_merge_pipeline(parts) for parts in names.values()],
        feed_bytes=sum(s.feed_bytes for s in snapshots),
        feed_checkpoints=sum(s.feed_checkpoints for s in snapshots),
        feed_last_read=_newest([s.feed_last_read for s in snapshots]),
        feed_latest=_newest([s.feed_latest for s in snapshots]),
        feed_problem=next((s.feed_problem for s in snapshots if s.feed_problem), None),
        feed_fetch_retries=_sum_counts([s.feed_fetch_retries for s in snapshots]),
        cohorts=[cohort for s in snapshots for cohort in s.cohorts],
    )


def _sum_counts(counts: Sequence[dict[str, int]]) -> dict[str, int]:
    """Counts by key, added up across processes."""
    total: dict[str, int] = {}
    for part in counts:
        for key, count in part.items():
            total[key] = total.get(key, 0) + count
    return total

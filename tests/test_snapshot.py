"""Snapshots of a job and their merge: what the parent of ``--processes`` shows for the job."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from indexer import IndexerExecutor, WorkerPool
from indexer.snapshot import COUNTERS, JobSnapshot, PipelineSnapshot, merge, take_snapshot
from indexer.sources import MemorySource
from indexer.testing import RecordingReducer, make_checkpoints
from workers import TransactionExtractor

BOUNDS = (0.1, 1.0)


def part(process: int, **fields: object) -> JobSnapshot:
    pipeline = PipelineSnapshot(name="p", start=0, position=0, watermark=0)
    return JobSnapshot(
        process=process,
        processes=(process,),
        taken_at=1000.0 + process,
        pipelines=[msgspec.structs.replace(pipeline, **fields)],
    )


counts = st.integers(min_value=0, max_value=10**9)


@given(st.lists(st.tuples(counts, counts, st.integers(0, 10**6)), min_size=2, max_size=5))
def test_counters_add_up_and_the_watermark_is_the_highest_read(
    numbers: list[tuple[int, int, int]],
) -> None:
    parts = [
        part(i, processed=processed, dead_letters=dead, watermark=mark, inflight=1)
        for i, (processed, dead, mark) in enumerate(numbers)
    ]
    merged = merge(parts)
    (pipeline,) = merged.pipelines
    assert pipeline.processed == sum(n[0] for n in numbers)
    assert pipeline.dead_letters == sum(n[1] for n in numbers)
    assert pipeline.watermark == max(n[2] for n in numbers)
    assert pipeline.inflight == len(numbers)
    assert merged.processes == tuple(range(len(numbers)))


def test_the_timestamp_is_the_one_read_highest_at_or_below_the_watermark() -> None:
    merged = merge(
        [
            part(0, watermark=500, stamp_at=300, watermark_timestamp_ms=3),
            part(1, watermark=400, stamp_at=500, watermark_timestamp_ms=5),
            part(2, watermark=450, stamp_at=700, watermark_timestamp_ms=7),  # past 500: not it
        ]
    )
    (pipeline,) = merged.pipelines
    assert (pipeline.watermark, pipeline.stamp_at, pipeline.watermark_timestamp_ms) == (500, 500, 5)


def test_histograms_add_up_bucket_by_bucket() -> None:
    from indexer.snapshot import HistogramSnapshot

    one = HistogramSnapshot(BOUNDS, [1, 2, 3], 4.0)
    two = HistogramSnapshot(BOUNDS, [10, 20, 30], 40.0)
    merged = merge(
        [part(0, histograms={"commit_seconds": one}), part(1, histograms={"commit_seconds": two})]
    )
    histogram = merged.pipelines[0].histograms["commit_seconds"]
    assert histogram.counts == [11, 22, 33] and histogram.sum == 44.0
    assert histogram.cumulative() == [("0.1", 11), ("1.0", 33), ("+Inf", 66)]


async def test_a_snapshot_survives_the_pipe_to_the_parent() -> None:
    executor = IndexerExecutor(handle_signals=False, tune_gc=False)
    executor.register(WorkerPool(TransactionExtractor(), name="p", reducer=RecordingReducer()))
    await executor.run(MemorySource(make_checkpoints(50)))
    snapshot = take_snapshot(executor.job, process=3)
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(snapshot), type=JobSnapshot)
    assert decoded == snapshot
    (pipeline,) = decoded.pipelines
    assert (pipeline.processed, pipeline.watermark, pipeline.start) == (50, 50, 0)
    assert pipeline.watermark_timestamp_ms is not None
    assert set(COUNTERS) <= set(msgspec.structs.asdict(pipeline))

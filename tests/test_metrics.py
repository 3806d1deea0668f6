"""The metrics a job exposes: every scrape is one moment of the run."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from prometheus_client.core import Metric

from indexer import Checkpoint, IndexerExecutor, Worker, WorkerPool
from indexer.metrics import IndexerCollector
from indexer.sources import MemorySource
from indexer.testing import RecordingReducer, make_checkpoints


class Yielding(Worker[Checkpoint, int]):
    """Gives the loop a turn in every call, so that scrapes land amid the work; at every
    ``hold_every``-th checkpoint it waits until ``scraped`` is set again (by a scrape), so that
    scrapes land mid-run however the threads are scheduled."""

    def __init__(self, hold_every: int = 0) -> None:
        self.hold_every = hold_every
        self.scraped = threading.Event()

    async def process_checkpoint(self, checkpoint: Checkpoint) -> int:
        n = checkpoint.sequence_number
        if self.hold_every and n and n % self.hold_every == 0:
            self.scraped.clear()
            while not self.scraped.is_set():
                await asyncio.sleep(0.001)
        await asyncio.sleep(0)
        return n


def values(families: list[Metric]) -> dict[str, float]:
    """Sample name (with the ``le`` of a bucket, if any) -> value, for one pipeline."""
    found = {}
    for family in families:
        for sample in family.samples:
            le = sample.labels.get("le")
            found[sample.name if le is None else f"{sample.name}{{le={le}}}"] = sample.value
    return found


async def test_a_scrape_from_another_thread_sees_one_moment_of_the_run() -> None:
    count = 20_000
    executor = IndexerExecutor(handle_signals=False, tune_gc=False)
    reducer = RecordingReducer(max_batch_size=7, max_batch_age=None)
    worker = Yielding(hold_every=4000)
    executor.register(WorkerPool(worker, name="p", concurrency=8, reducer=reducer))
    collector = IndexerCollector(executor.job)
    running = asyncio.create_task(executor.run(MemorySource(make_checkpoints(count))))

    def scrape_while_it_runs() -> list[dict[str, float]]:
        while executor.job.loop is None:  # until the run started (before, nothing moves)
            time.sleep(0.001)
        scrapes = []
        while not running.done() and len(scrapes) < 2000:
            scrapes.append(values(list(collector.collect())))
            worker.scraped.set()
        return scrapes

    scrapes = await asyncio.to_thread(scrape_while_it_runs)
    assert await running == {"p": count}
    midway = [s for s in scrapes if 0 < s["indexer_watermark"] < count]
    assert midway, "no scrape landed while the run was committing"
    for scrape in midway:
        processed = scrape["indexer_checkpoints_processed_total"]
        # Counted in the same step as the completion: equal at any moment of the loop.
        assert scrape["indexer_checkpoint_processing_seconds_count"] == processed
        # One message per checkpoint, committed with the watermark: equal at any moment.
        assert scrape["indexer_reducer_batch_messages_sum"] == scrape["indexer_watermark"]
        assert scrape["indexer_lag_checkpoints"] == count - scrape["indexer_watermark"]
        assert processed >= scrape["indexer_watermark"]
        # The newest committed checkpoint's own timestamp, whatever order calls finished in.
        newest = make_checkpoints(1, start=int(scrape["indexer_watermark"]) - 1)[0]
        assert scrape["indexer_watermark_timestamp_seconds"] == newest.timestamp_ms / 1000
        assert scrape["indexer_pipeline_halted"] == 0


def test_without_a_running_loop_the_scrape_is_built_where_it_is_asked() -> None:
    executor = IndexerExecutor(handle_signals=False)
    executor.register(WorkerPool(Yielding(), name="p"))
    found: dict[str, Any] = values(list(IndexerCollector(executor.job).collect()))
    assert found["indexer_watermark"] == 0
    assert found["indexer_checkpoints_processed_total"] == 0
    # Nothing committed: no timestamp, lag in seconds or commit time to show yet.
    assert "indexer_watermark_timestamp_seconds" not in found
    assert "indexer_lag_seconds" not in found
    assert "indexer_last_commit_timestamp_seconds" not in found
    assert found["indexer_pipeline_halted"] == 0

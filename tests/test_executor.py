"""IndexerExecutor: shared reader, resume points, limits, shutdown and exactly-once restarts."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from indexer import (
    Checkpoint,
    ConfigurationError,
    IndexerExecutor,
    TransactionalReducer,
    Worker,
    WorkerPool,
)
from indexer.progress import FileProgressStore, MemoryProgressStore, SqliteProgressStore
from indexer.sources import MemorySource, SyntheticSource
from indexer.testing import RecordingReducer, make_checkpoints, run_worker


class Seen(Worker[Checkpoint, int]):
    def __init__(self, name: str, delay: float = 0.0) -> None:
        self.name = name
        self.delay = delay
        self.seen: list[int] = []

    async def process_checkpoint(self, checkpoint: Checkpoint) -> int:
        self.seen.append(checkpoint.sequence_number)
        if self.delay:
            await asyncio.sleep(self.delay)
        return checkpoint.sequence_number


def executor_for(store: Any = None, *pools: WorkerPool[Any, Any]) -> IndexerExecutor:
    executor = IndexerExecutor(store, handle_signals=False, tune_gc=False)
    for pool in pools:
        executor.register(pool)
    return executor


async def test_run_without_pools_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="no pipelines registered"):
        await executor_for().run(MemorySource([]))


def test_duplicate_pipeline_names_are_rejected() -> None:
    executor = executor_for(None, WorkerPool(Seen("a")))
    with pytest.raises(ConfigurationError, match="'a' is already registered"):
        executor.register(WorkerPool(Seen("a")))


@pytest.mark.parametrize(
    ("first", "last", "message"),
    [
        (-1, None, "first_checkpoint must be a non-negative integer, got -1"),
        (None, -5, "last_checkpoint must be a non-negative integer, got -5"),
        (10, 9, r"last_checkpoint \(9\) is below first_checkpoint \(10\)"),
    ],
)
async def test_bad_checkpoint_bounds(first: int | None, last: int | None, message: str) -> None:
    executor = executor_for(None, WorkerPool(Seen("a")))
    with pytest.raises(ConfigurationError, match=message):
        await executor.run(MemorySource(make_checkpoints(3)), first, last)


async def test_last_checkpoint_is_inclusive_and_drains_an_endless_source() -> None:
    worker = Seen("a", delay=0.001)
    reducer = RecordingReducer(max_batch_size=16)
    store = MemoryProgressStore()
    executor = executor_for(store, WorkerPool(worker, concurrency=8, reducer=reducer))
    result = await asyncio.wait_for(executor.run(SyntheticSource(seed=3), last_checkpoint=99), 10)
    assert result == {"a": 100}
    assert sorted(worker.seen) == list(range(100))
    assert reducer.messages == list(range(100))
    assert await store.load("a") == 100


async def test_pipelines_resume_from_their_own_watermarks_sharing_one_reader() -> None:
    store = MemoryProgressStore({"a": 10, "b": 30})
    a, b, c = Seen("a"), Seen("b"), Seen("c")
    reducer_b = RecordingReducer(max_batch_size=5)
    read: list[int] = []

    class Recording(MemorySource):
        async def stream(self, start: int, decoder: Any):  # type: ignore[override]
            read.append(start)
            async for batch in super().stream(start, decoder):
                yield batch

    executor = executor_for(
        store,
        WorkerPool(a, concurrency=3),
        WorkerPool(b, concurrency=2, reducer=reducer_b),
        WorkerPool(c),
    )
    result = await executor.run(Recording(make_checkpoints(50)), first_checkpoint=20)
    assert read == [10]  # the lowest saved watermark (c has none: first_checkpoint=20)
    assert sorted(a.seen) == list(range(10, 50))
    assert sorted(b.seen) == list(range(30, 50))
    assert sorted(c.seen) == list(range(20, 50))
    assert reducer_b.messages == list(range(30, 50))
    assert result == {"a": 50, "b": 50, "c": 50}
    assert await store.watermarks() == {"a": 50, "b": 50, "c": 50}


async def test_pipelines_already_past_last_checkpoint_do_nothing() -> None:
    store = MemoryProgressStore({"a": 100})
    worker = Seen("a")
    result = await executor_for(store, WorkerPool(worker)).run(
        MemorySource(make_checkpoints(200)), last_checkpoint=50
    )
    assert result == {"a": 100}
    assert worker.seen == []


async def test_graceful_stop_finishes_running_work_and_saves_the_watermark(
    tmp_path: Path,
) -> None:
    store = FileProgressStore(tmp_path / "progress.json")
    worker = Seen("a", delay=0.005)
    reducer = RecordingReducer(max_batch_size=10, max_batch_age=10)
    executor = executor_for(store, WorkerPool(worker, concurrency=4, reducer=reducer))
    run = asyncio.create_task(executor.run(SyntheticSource(seed=1)))
    while len(worker.seen) < 30:
        await asyncio.sleep(0.002)
    executor.request_stop()
    result = await asyncio.wait_for(run, 5)
    saved = await FileProgressStore(tmp_path / "progress.json").load("a")
    assert saved == result["a"] >= 26  # every completed checkpoint was flushed, not dropped
    assert reducer.messages == list(range(saved))  # the partial batch was committed too


async def test_a_failing_worker_does_not_block_a_graceful_stop() -> None:
    class Broken(Worker[Checkpoint, int]):
        async def process_checkpoint(self, checkpoint: Checkpoint) -> int:
            raise RuntimeError("always")

    executor = executor_for(None, WorkerPool(Broken(), name="x", concurrency=2))
    run = asyncio.create_task(executor.run(SyntheticSource(seed=1)))
    await asyncio.sleep(0.05)
    executor.request_stop()
    assert await asyncio.wait_for(run, 2) == {"x": 0}


async def test_checkpoint_types_must_agree() -> None:
    class Other(Checkpoint):
        pass

    class OtherWorker(Worker[Other, None]):
        async def process_checkpoint(self, checkpoint: Other) -> None:
            return None

    executor = executor_for(None, WorkerPool(Seen("a")), WorkerPool(OtherWorker()))
    with pytest.raises(ConfigurationError, match="one checkpoint type"):
        await executor.run(MemorySource(make_checkpoints(1)))


async def test_transactional_reducer_needs_a_transactional_store() -> None:
    executor = executor_for(MemoryProgressStore(), WorkerPool(Seen("a"), reducer=RowsReducer()))
    with pytest.raises(ConfigurationError, match="has none; use SqliteProgressStore"):
        await executor.run(MemorySource(make_checkpoints(1)))


class RowsReducer(TransactionalReducer[int]):
    """Writes one row per checkpoint into the progress store's own SQLite database."""

    max_batch_size = 7
    max_batch_age = 0.01

    async def commit_in_transaction(self, connection: Any, batch: list[int]) -> None:
        await connection.execute("CREATE TABLE IF NOT EXISTS rows (checkpoint INTEGER)")
        await connection.executemany("INSERT INTO rows VALUES (?)", [(n,) for n in batch])


async def test_restarts_after_crashes_commit_every_checkpoint_exactly_once(
    tmp_path: Path,
) -> None:
    """Abort the run at random moments (as a second signal or a kill would) and restart it."""
    path = tmp_path / "index.db"
    rnd = random.Random(7)
    total = 400
    result: dict[str, int] = {}
    for attempt in range(30):
        store = SqliteProgressStore(path)
        worker = Seen("rows", delay=0.0005)
        executor = executor_for(store, WorkerPool(worker, concurrency=8, reducer=RowsReducer()))
        run = asyncio.create_task(executor.run(SyntheticSource(seed=2), last_checkpoint=total - 1))
        await asyncio.sleep(rnd.uniform(0.01, 0.2))
        if run.done():
            result = run.result()
            break
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        await store.close()
        assert attempt < 29, "never finished"
    assert result == {"rows": total}
    with sqlite3.connect(path) as db:
        rows = [n for (n,) in db.execute("SELECT checkpoint FROM rows ORDER BY checkpoint")]
    assert rows == list(range(total))  # none missing, none twice


class MisconfiguredReducer(RecordingReducer[Any]):
    """Finds out at its first commit that a setting is wrong (a table that does not fit)."""

    def __init__(self) -> None:
        super().__init__(max_batch_size=5)
        self.attempts = 0

    async def commit(self, batch: list[Any]) -> None:
        self.attempts += 1
        raise ConfigurationError("table 'rows' has no column 'digest'")


async def test_a_configuration_error_in_commit_halts_without_retrying() -> None:
    reducer = MisconfiguredReducer()
    store = MemoryProgressStore()
    with pytest.raises(ConfigurationError, match=r"'p'.*no column 'digest'"):
        await run_worker(Seen("p"), make_checkpoints(20), reducer=reducer, store=store)
    assert reducer.attempts == 1
    assert await store.load("p") in (None, 0)


async def test_a_pool_is_a_description_that_every_run_starts_from_afresh() -> None:
    """Two executors run one WorkerPool one after the other, each over its own store: the
    second starts at its own store's watermark, and the pool carries nothing of the first."""
    reducer = RecordingReducer(max_batch_size=10)
    pool = WorkerPool(Seen("p"), concurrency=4, reducer=reducer)
    settings = dict(vars(pool))
    first = executor_for(MemoryProgressStore(), pool)
    assert await first.run(MemorySource(make_checkpoints(30))) == {"p": 30}
    assert vars(pool) == settings
    second = executor_for(MemoryProgressStore({"p": 20}), pool)
    assert await second.run(MemorySource(make_checkpoints(50))) == {"p": 50}
    assert reducer.messages == [*range(30), *range(20, 50)]
    assert first.job.pipelines["p"].stats.processed == 30
    assert second.job.pipelines["p"].stats.processed == 30
    assert (second.job.pipelines["p"].watermark, second.job.pipelines["p"].run) == (50, None)


async def test_the_job_view_shows_a_pipeline_with_nothing_to_do_at_its_saved_watermark() -> None:
    done, behind = WorkerPool(Seen("done")), WorkerPool(Seen("behind"))
    executor = executor_for(MemoryProgressStore({"done": 80, "behind": 10}), done, behind)
    assert await executor.run(MemorySource(make_checkpoints(60)), last_checkpoint=59) == {
        "done": 80,
        "behind": 60,
    }
    views = executor.job.pipelines
    assert (views["done"].watermark, views["done"].stats.processed) == (80, 0)
    assert (views["behind"].watermark, views["behind"].stats.processed) == (60, 50)

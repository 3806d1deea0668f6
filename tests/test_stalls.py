"""Stalls: the checkpoint holding a pipeline's watermark back, as a run records it in the
progress store for ``indexer status`` (another process) to read. The store methods on every
kind of store, an older database getting the table, the lease's view passing them through,
and the reporter that writes them."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import pytest

from indexer.errors import ProgressStoreError
from indexer.pipeline.failures import FailingCheckpoints
from indexer.pipeline.stall import StallReporter
from indexer.progress import (
    FileProgressStore,
    MemoryProgressStore,
    PostgresProgressStore,
    ProgressStore,
    SqliteProgressStore,
    Stall,
)

KINDS = ["memory", "file", "sqlite", "postgres"]


def stall(pipeline: str, checkpoint: int, attempts: int = 1, error: str = "boom") -> Stall:
    return Stall(
        pipeline,
        checkpoint,
        attempts,
        f"ValueError({error!r})",
        "worker.py:12",
        failing_since=100.0,
        committed_at=90.0,
        reported_at=110.0 + attempts,
    )


@pytest.fixture(params=KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ProgressStore]:
    """Each kind of store; PostgreSQL in a schema of its own, dropped with its tables after."""
    kind = request.param
    if kind == "memory":
        yield MemoryProgressStore()
    elif kind in ("file", "sqlite"):
        s = (
            FileProgressStore(tmp_path / "p.json")
            if kind == "file"
            else SqliteProgressStore(tmp_path / "p.db")
        )
        yield s
        await s.close()
    else:
        dsn = request.getfixturevalue("postgres_dsn")  # skips without a server
        schema = f"t_{uuid.uuid4().hex[:10]}"
        pg = PostgresProgressStore(dsn, schema=schema)
        try:
            yield pg
        finally:
            await pg.close()
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()


def reopened(store: ProgressStore) -> ProgressStore:
    """Another instance on the same storage: what ``indexer status`` opens."""
    if isinstance(store, FileProgressStore):
        return FileProgressStore(store.path)
    if isinstance(store, SqliteProgressStore):
        return SqliteProgressStore(store.path)
    if isinstance(store, PostgresProgressStore):
        return PostgresProgressStore(store.dsn, schema=store.schema)
    return store


# --- the store methods, on every kind of store ---------------------------------------------


async def test_stalls_are_recorded_replaced_filtered_and_sorted(store: ProgressStore) -> None:
    assert await store.stalls() == []
    await store.report_stall(stall("a", 7))
    await store.report_stall(stall("b", 3))
    await store.report_stall(stall("a", 2))
    await store.report_stall(stall("a", 7, attempts=4, error="again"))  # replaces a/7
    assert await store.stalls() == [stall("a", 2), stall("b", 3), stall("a", 7, 4, "again")]
    assert await store.stalls("a") == [stall("a", 2), stall("a", 7, 4, "again")]
    assert await store.stalls("nobody") == []


async def test_a_stall_is_cleared_by_its_pipeline_and_checkpoint(store: ProgressStore) -> None:
    await store.report_stall(stall("a", 2))
    await store.report_stall(stall("a", 7))
    await store.report_stall(stall("b", 2))
    await store.clear_stall("a", 2)
    await store.clear_stall("a", 99)  # none there: nothing happens
    assert await store.stalls() == [stall("b", 2), stall("a", 7)]


async def test_reset_and_drop_forget_the_pipelines_stalls(store: ProgressStore) -> None:
    for pipeline in ("a", "b", "c"):
        await store.save(pipeline, 1)
        await store.report_stall(stall(pipeline, 5))
    await store.reset("a", 0)
    await store.drop("b")
    assert await store.stalls() == [stall("c", 5)]
    assert await store.watermarks() == {"a": 0, "c": 1}


async def test_another_instance_reads_the_stalls(store: ProgressStore) -> None:
    """``indexer status`` is another process: it opens the store anew and sees them."""
    await store.report_stall(stall("a", 4, attempts=3))
    other = reopened(store)
    try:
        assert await other.stalls() == [stall("a", 4, attempts=3)]
    finally:
        if other is not store:
            await other.close()


async def test_the_leases_view_passes_stalls_to_the_real_store(store: ProgressStore) -> None:
    """A run writes through what ``hold`` yields (fenced by the lease on a database): a stall
    is a diagnostic and goes to the real store unfenced."""
    if isinstance(store, MemoryProgressStore | FileProgressStore):
        pytest.skip("no lease on this store: hold yields the store itself")
    await store.open()
    async with store.hold(["a"], owner="test:1", ttl=30.0, on_lost=lambda *_: None) as held:
        assert held is not store
        await held.report_stall(stall("a", 4))
        assert await held.stalls("a") == [stall("a", 4)]
        assert await store.stalls() == [stall("a", 4)]
        await held.clear_stall("a", 4)
        assert await store.stalls() == []


# --- an earlier version's database gets the table --------------------------------------------


async def test_an_older_sqlite_file_gets_the_stalls_table(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # what the first release created
        conn.execute(
            "CREATE TABLE indexer_watermarks (pipeline TEXT PRIMARY KEY, "
            "next_checkpoint INTEGER NOT NULL, updated_at REAL NOT NULL)"
        )
        conn.execute(
            "CREATE TABLE indexer_dead_letters (pipeline TEXT, sequence_number INTEGER, "
            "error TEXT, recorded_at REAL, PRIMARY KEY (pipeline, sequence_number))"
        )
        conn.execute("INSERT INTO indexer_watermarks VALUES ('a', 12, 0)")
    conn.close()
    async with SqliteProgressStore(path) as store:
        assert await store.load("a") == 12
        await store.report_stall(stall("a", 12))
        assert await store.stalls() == [stall("a", 12)]


async def test_an_older_postgres_schema_gets_the_stalls_table(
    postgres_dsn: str, pg_schema: str
) -> None:
    async with PostgresProgressStore(postgres_dsn, schema=pg_schema) as store:
        await store.save("a", 12)
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(
            f'DROP TABLE "{pg_schema}".indexer_stalls'
        )  # as an older version left it
    finally:
        await conn.close()
    async with PostgresProgressStore(postgres_dsn, schema=pg_schema) as store:
        assert await store.load("a") == 12
        await store.report_stall(stall("a", 12))
        assert await store.stalls() == [stall("a", 12)]


# --- the reporter ----------------------------------------------------------------------------


class RecordingStore(MemoryProgressStore):
    """A memory store that keeps every stall write in order, and can be made to fail them."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[str, int, int]] = []
        self.failing = False

    async def report_stall(self, stall: Stall) -> None:
        if self.failing:
            raise ProgressStoreError("the store is down")
        self.writes.append(("report", stall.checkpoint, stall.attempts))
        await super().report_stall(stall)

    async def clear_stall(self, pipeline: str, checkpoint: int) -> None:
        self.writes.append(("clear", checkpoint, 0))
        await super().clear_stall(pipeline, checkpoint)


async def until(condition: Callable[[], object]) -> None:
    """Wait, on the loop, for ``condition()`` to hold (5 s at most)."""
    async with asyncio.timeout(5.0):
        while not condition():
            await asyncio.sleep(0.005)


def raised(exc: Exception) -> Exception:
    """``exc`` after it was raised here: with a traceback naming this file."""
    try:
        raise exc
    except Exception as caught:
        return caught


async def test_the_reporter_writes_the_first_failure_at_once_then_at_most_every_interval() -> None:
    store, failing = RecordingStore(), FailingCheckpoints()
    reporter = StallReporter("p", store, failing, committed_at=lambda: 42.0, interval=0.2)
    failing.on_change = reporter.changed
    failing.failed(9, 1, raised(ValueError("boom")))
    await until(lambda: store.writes)
    (written,) = await store.stalls("p")
    assert (written.checkpoint, written.attempts, written.committed_at) == (9, 1, 42.0)
    assert written.error == "ValueError('boom')"
    assert written.location.startswith(f"{Path(__file__).relative_to(Path.cwd())}:")
    for attempt in range(2, 6):  # a burst: at most one more write before the interval ends
        failing.failed(9, attempt, ValueError("boom"))
    failing.failed(4, 1, ValueError("lower"))  # a lower one holds the watermark back now
    assert store.writes == [("report", 9, 1)]
    await until(lambda: len(store.writes) == 3)
    assert store.writes[1:] == [("clear", 9, 0), ("report", 4, 1)]
    failing.recovered(4)
    failing.recovered(9)
    await until(lambda: store.writes[-1][0] == "clear")
    assert await store.stalls() == []
    await reporter.close()
    assert store.writes[-1] == ("clear", 4, 0)


async def test_the_reporter_leaves_the_stuck_checkpoint_recorded_when_the_run_ends() -> None:
    store, failing = RecordingStore(), FailingCheckpoints()
    reporter = StallReporter("p", store, failing, committed_at=lambda: 1.0, interval=60.0)
    failing.on_change = reporter.changed
    failing.failed(3, 1, ConnectionError("down"))
    await until(lambda: store.writes)
    failing.failed(3, 2, ConnectionError("down"))
    await reporter.close()  # the final state is written, not left for the interval
    assert [(s.checkpoint, s.attempts) for s in await store.stalls()] == [(3, 2)]
    failing.failed(3, 3, ConnectionError("down"))  # after close: nothing more is written
    await asyncio.sleep(0)
    assert store.writes == [("report", 3, 1), ("report", 3, 2)]


async def test_a_reporter_whose_store_fails_drops_the_write_and_raises_nothing() -> None:
    store, failing = RecordingStore(), FailingCheckpoints()
    store.failing = True
    reporter = StallReporter("p", store, failing, committed_at=lambda: 1.0, interval=60.0)
    failing.on_change = reporter.changed
    failing.failed(3, 1, ConnectionError("down"))
    await reporter.close()
    assert await store.stalls() == []


async def test_a_run_where_nothing_fails_writes_no_stall() -> None:
    from indexer.testing import make_checkpoints, run_worker
    from indexer.worker import Worker

    class Fine(Worker):  # type: ignore[type-arg]
        async def process_checkpoint(self, checkpoint: object) -> int:
            return 1

    store = RecordingStore()
    result = await run_worker(Fine(), make_checkpoints(50), concurrency=4, store=store)
    assert result.watermark == 50
    assert store.writes == []

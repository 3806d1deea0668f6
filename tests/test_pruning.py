"""Pruning, below the command: the built-in sinks delete the rows of old checkpoints in bounded
chunks, each its own transaction, on the database their batches go to; CounterSink takes old
checkpoints' counts back out of its totals; a retention a reducer cannot honour is refused when
the pipeline is built; and the pruner records the mark only after the rows are gone, retries a
failed prune and never stops the pipeline."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from indexer import ConfigurationError, Reducer, WorkerPool
from indexer.pipeline.pruner import RetentionPruner
from indexer.progress import (
    MemoryProgressStore,
    PostgresProgressStore,
    ProgressStore,
    SqliteProgressStore,
)
from indexer.retry import RetryPolicy
from indexer.stats import PipelineStats
from indexer.testing import make_checkpoints
from reducers import CounterSink, JsonlSink, PostgresSink, SqliteSink
from workers import ActivityCounter, TransactionExtractor
from workers.counter import Counts

COLUMNS = {"checkpoint": "INTEGER", "n": "INTEGER"}
#: Rows per checkpoint the tests write.
PER_CHECKPOINT = 3
FAST = RetryPolicy(initial=0.001, max_delay=0.001, jitter=0)


def rows_of(first: int, count: int) -> list[list[tuple[int, int]]]:
    """One message per checkpoint ``first``.., each of ``PER_CHECKPOINT`` rows."""
    return [[(c, i) for i in range(PER_CHECKPOINT)] for c in range(first, first + count)]


class ChunkCountingSqliteSink(SqliteSink):
    """A SqliteSink that remembers how many rows each of its delete transactions took, and
    whether the connection was inside a transaction then."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.chunks: list[tuple[int, bool]] = []

    async def delete_below(self, connection: Any, checkpoint: int, limit: int) -> int:
        deleted = await super().delete_below(connection, checkpoint, limit)
        self.chunks.append((deleted, connection.in_transaction))
        return deleted


def sqlite_checkpoints(db: Path, table: str = "rows") -> Counter[int]:
    with sqlite3.connect(db) as conn:
        found = Counter(row[0] for row in conn.execute(f"SELECT checkpoint FROM {table}"))
    conn.close()
    return found


# -- SqliteSink -------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["store's database", "own database"])
async def test_sqlite_sink_prunes_below_in_bounded_transactions(tmp_path: Path, where: str) -> None:
    store = SqliteProgressStore(tmp_path / "index.db")
    own = where == "own database"
    path = tmp_path / "rows.db" if own else None
    sink = ChunkCountingSqliteSink("rows", COLUMNS, path=path, prune_chunk_size=7)
    sink.enable_pruning()
    async with store:
        if own:
            await sink.commit(rows_of(0, 50))
        else:
            async with store.transaction("p", 50) as conn:
                await sink.commit_in_transaction(conn, rows_of(0, 50))
        deleted = await sink.prune(30, store)
        assert deleted == 30 * PER_CHECKPOINT
        assert [n for n, _ in sink.chunks] == [7] * 12 + [6, 0]  # 90 rows, then none left
        assert all(inside for _, inside in sink.chunks)  # each chunk in a transaction
        assert await sink.prune(30, store) == 0  # again: nothing left below
        await sink.close()
    db = path or tmp_path / "index.db"
    assert sqlite_checkpoints(db) == {c: PER_CHECKPOINT for c in range(30, 50)}
    with sqlite3.connect(db) as conn:  # retention indexes the checkpoint column
        index = conn.execute("SELECT name FROM sqlite_master WHERE name = 'rows_cp'").fetchall()
    conn.close()
    assert index == [("rows_cp",)]


async def test_a_commit_waits_for_one_chunk_at_most(tmp_path: Path) -> None:
    """The sink's own connection takes one transaction at a time: a commit made while a prune
    runs lands between two chunks, and both finish."""
    sink = SqliteSink("rows", COLUMNS, path=tmp_path / "rows.db", prune_chunk_size=2)
    sink.enable_pruning()
    await sink.commit(rows_of(0, 200))
    store = MemoryProgressStore()
    pruning = asyncio.create_task(sink.prune(150, store))
    while not sqlite_checkpoints(tmp_path / "rows.db").get(0, 0) < PER_CHECKPOINT:
        await asyncio.sleep(0.001)
    async with asyncio.timeout(5):
        await sink.commit(rows_of(200, 1))  # not after the whole prune: pruning goes on
    assert not pruning.done()
    assert await pruning == 150 * PER_CHECKPOINT
    await sink.close()
    assert sqlite_checkpoints(tmp_path / "rows.db") == {c: PER_CHECKPOINT for c in range(150, 201)}


async def test_pruning_before_the_first_batch_deletes_nothing(tmp_path: Path) -> None:
    sink = SqliteSink("rows", COLUMNS, path=tmp_path / "rows.db")
    sink.enable_pruning()
    assert await sink.prune(10, MemoryProgressStore()) == 0
    await sink.close()


# -- PostgresSink ------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["store's database", "own database"])
async def test_postgres_sink_prunes_below_in_bounded_transactions(
    postgres_dsn: str, pg_schema: str, where: str
) -> None:
    store: ProgressStore
    if where == "store's database":
        store = PostgresProgressStore(postgres_dsn, schema=pg_schema)
        sink = PostgresSink("rows", COLUMNS, schema=pg_schema, prune_chunk_size=7)
    else:
        store = MemoryProgressStore()
        sink = PostgresSink("rows", COLUMNS, dsn=postgres_dsn, schema=pg_schema, prune_chunk_size=7)
    sink.enable_pruning()
    assert await sink.prune(30, store) == 0  # no table yet
    async with store:
        if isinstance(store, PostgresProgressStore):
            async with store.transaction("p", 50) as conn:
                await sink.commit_in_transaction(conn, rows_of(0, 50))
        else:
            await sink.commit(rows_of(0, 50))
        assert await sink.prune(30, store) == 30 * PER_CHECKPOINT
        await sink.close()
    conn = await asyncpg.connect(postgres_dsn)
    try:
        rows = await conn.fetch(f'SELECT checkpoint FROM "{pg_schema}".rows')
        index = await conn.fetchval("SELECT to_regclass($1)", f'"{pg_schema}".rows_cp')
    finally:
        await conn.close()
    assert Counter(row[0] for row in rows) == {c: PER_CHECKPOINT for c in range(30, 50)}
    assert index is not None


# -- CounterSink -------------------------------------------------------------------------------


def counts_of(checkpoint: int) -> Counts:
    """A checkpoint's counts: shared senders, one sender of its own, an event type."""
    counts = Counts(
        {
            ("sender", f"0x{checkpoint % 7}"): 1,
            ("sender", f"only-{checkpoint}"): 2,
            ("event_type", "dex::Swap"): checkpoint % 3 + 1,
        }
    )
    counts.checkpoint = checkpoint
    return counts


async def test_activity_counter_counts_carry_their_checkpoint() -> None:
    (checkpoint,) = make_checkpoints(1, start=41, transactions=2)
    counts = await ActivityCounter().process_checkpoint(checkpoint)
    assert counts.checkpoint == 41


def totals(db: Path, table: str = "activity_counts") -> dict[tuple[str, str], int]:
    with sqlite3.connect(db) as conn:
        found = {
            (d, k): n for d, k, n in conn.execute(f"SELECT dimension, key, count FROM {table}")
        }
    conn.close()
    return found


async def test_counter_sink_takes_old_checkpoints_counts_back_out(tmp_path: Path) -> None:
    db = tmp_path / "counts.db"
    sink = CounterSink(path=db, prune_chunk_size=5)
    sink.enable_pruning()
    messages = [counts_of(c) for c in range(40)]
    for first in range(0, 40, 8):
        await sink.commit(messages[first : first + 8])
    deleted = await sink.prune(25, MemoryProgressStore())
    await sink.close()
    newest = Counter[tuple[str, str]]()
    for message in messages[25:]:
        newest.update(message)
    assert totals(db) == dict(newest)  # the keys counted only below 25 are gone
    assert ("sender", "only-24") not in totals(db)
    assert deleted == sum(len(m) for m in messages[:25])
    with sqlite3.connect(db) as conn:
        kept = conn.execute("SELECT min(checkpoint) FROM activity_counts_by_checkpoint").fetchone()
    conn.close()
    assert kept == (25,)


async def test_counter_sink_under_a_retention_needs_counts_with_their_checkpoint(
    tmp_path: Path,
) -> None:
    sink = CounterSink(path=tmp_path / "counts.db")
    sink.enable_pruning()
    with pytest.raises(ConfigurationError, match="needs Counts that carry their checkpoint"):
        await sink.commit([Counts({("sender", "0x1"): 1})])
    await sink.close()


# -- what a retention needs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reducer", "retention", "interval", "message"),
    [
        (
            lambda tmp: SqliteSink("rows", COLUMNS, path=tmp / "r.db"),
            0,
            60.0,
            "pipeline 'p': retention must be at least 1 checkpoint, got 0",
        ),
        (
            lambda tmp: SqliteSink("rows", COLUMNS, path=tmp / "r.db"),
            10,
            0.0,
            "pipeline 'p': retention_interval must be > 0 seconds, got 0.0",
        ),
        (
            lambda tmp: None,
            10,
            60.0,
            "pipeline 'p': retention is set, but the pipeline has no reducer: there are no rows "
            "to prune",
        ),
        (
            lambda tmp: JsonlSink(tmp / "rows.jsonl"),
            10,
            60.0,
            "pipeline 'p': retention is set, but JsonlSink cannot prune its rows",
        ),
        (
            lambda tmp: SqliteSink("rows", COLUMNS, path=tmp / "r.db", checkpoint_column=None),
            10,
            60.0,
            "pipeline 'p': retention is set, but SqliteSink 'rows' cannot prune its rows: it "
            "records no checkpoint of them (checkpoint_column)",
        ),
    ],
    ids=["zero", "interval", "no reducer", "jsonl", "no checkpoint column"],
)
def test_a_retention_the_pipeline_cannot_honour_is_refused(
    tmp_path: Path, reducer: Any, retention: int, interval: float, message: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        WorkerPool(
            TransactionExtractor(),
            name="p",
            reducer=reducer(tmp_path),
            retention=retention,
            retention_interval=interval,
        )
    assert str(caught.value) == message


def test_a_chunk_size_below_one_is_refused(tmp_path: Path) -> None:
    sink = SqliteSink("rows", COLUMNS, path=tmp_path / "r.db", prune_chunk_size=0)
    with pytest.raises(ConfigurationError) as caught:
        WorkerPool(TransactionExtractor(), name="p", reducer=sink)
    assert (
        str(caught.value) == "SqliteSink 'rows': prune_chunk_size must be a positive integer, got 0"
    )


# -- the pruner --------------------------------------------------------------------------------


class ScriptedPrune(Reducer[Any]):
    """A reducer whose prune fails ``failures`` times, then waits for ``release`` (if given)
    and deletes ``rows``; it remembers every ``below`` it was asked."""

    def __init__(self, failures: int = 0, release: asyncio.Event | None = None) -> None:
        super().__init__()
        self.failures = failures
        self.release = release
        self.asked: list[int] = []
        self.entered = asyncio.Event()

    async def commit(self, batch: list[Any]) -> None:
        pass

    async def prune(self, below: int, store: Any) -> int:
        self.asked.append(below)
        self.entered.set()
        if len(self.asked) <= self.failures:
            raise OSError("the database went away")
        if self.release is not None:
            await self.release.wait()
        return 5


def pruner_of(
    reducer: Reducer[Any], store: ProgressStore, watermark: list[int], retention: int = 10
) -> RetentionPruner:
    return RetentionPruner(
        "p",
        reducer,
        store,
        retention=retention,
        interval=0.01,
        watermark=lambda: watermark[0],
        stats=PipelineStats(),
        policy=FAST,
    )


async def until(condition: Any) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.001)


async def test_a_failed_prune_is_retried_then_the_mark_recorded() -> None:
    store = MemoryProgressStore()
    reducer = ScriptedPrune(failures=2)
    pruner = pruner_of(reducer, store, [100])
    pruner.start()
    await until(lambda: pruner.stats.pruned_below == 90)
    await pruner.close()
    assert reducer.asked == [90, 90, 90]
    assert await store.pruned_below("p") == 90


async def test_the_mark_is_recorded_only_after_the_rows_are_gone() -> None:
    store = MemoryProgressStore()
    release = asyncio.Event()
    reducer = ScriptedPrune(release=release)
    pruner = pruner_of(reducer, store, [100])
    pruner.start()
    await reducer.entered.wait()
    assert await store.pruned_below("p") is None  # deleting: no mark yet
    await pruner.close()  # stopped mid-prune (a kill): the mark stays where it was
    assert await store.pruned_below("p") is None
    release.set()
    again = pruner_of(ScriptedPrune(), store, [100])
    again.start()  # the next run prunes again from the old mark
    await until(lambda: again.stats.pruned_below == 90)
    await again.close()
    assert await store.pruned_below("p") == 90


async def test_a_pruner_prunes_again_only_once_the_watermark_passes_the_mark() -> None:
    store = MemoryProgressStore()
    await store.record_pruned("p", 90)
    watermark = [100]
    reducer = ScriptedPrune()
    pruner = pruner_of(reducer, store, watermark)
    pruner.start()
    await until(lambda: pruner.stats.pruned_below == 90)  # the stored mark, read at start
    await asyncio.sleep(0.05)  # several intervals with nothing new to prune
    assert reducer.asked == []
    watermark[0] = 130
    await until(lambda: reducer.asked)
    await until(lambda: pruner.stats.pruned_below == 120)
    await pruner.close()
    assert reducer.asked == [120]


async def test_a_reducer_refusing_to_prune_stops_the_pruner_not_the_pipeline() -> None:
    class Refusing(ScriptedPrune):
        async def prune(self, below: int, store: Any) -> int:
            self.asked.append(below)
            raise ConfigurationError("no such table")

    store = MemoryProgressStore()
    reducer = Refusing()
    pruner = pruner_of(reducer, store, [100])
    pruner.start()
    await until(lambda: reducer.asked)
    await asyncio.sleep(0.05)
    await pruner.close()
    assert reducer.asked == [90]  # not retried: retrying cannot help
    assert await store.pruned_below("p") is None

"""The pruned-below mark of a pipeline with a retention, as every kind of progress store keeps
it: rise-only, lowered by a reset (what is re-indexed is written again), forgotten by a drop,
read by another instance (``indexer status``), passed through the lease's view, and added to a
database an earlier version made."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from indexer.progress import (
    FileProgressStore,
    MemoryProgressStore,
    PostgresProgressStore,
    ProgressStore,
    SqliteProgressStore,
)

KINDS = ["memory", "file", "sqlite", "postgres"]


@pytest.fixture(params=KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ProgressStore]:
    """Each kind of store; PostgreSQL in a schema of its own, dropped with its tables after."""
    kind = request.param
    if kind == "memory":
        yield MemoryProgressStore()
    elif kind == "file":
        file_store = FileProgressStore(tmp_path / "p.json")
        yield file_store
        await file_store.close()
    elif kind == "sqlite":
        sqlite_store = SqliteProgressStore(tmp_path / "p.db")
        yield sqlite_store
        await sqlite_store.close()
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


async def test_a_mark_only_rises_and_pipelines_are_apart(store: ProgressStore) -> None:
    assert await store.pruned_below("a") is None
    await store.record_pruned("a", 40)
    await store.record_pruned("a", 25)  # an older prune finishing late: the mark stays
    await store.record_pruned("b", 7)
    assert await store.pruned_below("a") == 40
    assert await store.pruned_below("b") == 7
    await store.record_pruned("a", 90)
    assert await store.pruned_below("a") == 90


async def test_a_reset_lowers_the_mark_to_the_watermark_and_drop_forgets_it(
    store: ProgressStore,
) -> None:
    for pipeline in ("a", "b", "c"):
        await store.save(pipeline, 100)
        await store.record_pruned(pipeline, 60)
    await store.reset("a", 30)  # checkpoints 30.. are indexed again: their rows come back
    await store.reset("b", 80)  # above the mark: the rows below it are still gone
    await store.drop("c")
    assert await store.pruned_below("a") == 30
    assert await store.pruned_below("b") == 60
    assert await store.pruned_below("c") is None
    await store.record_pruned("a", 45)  # and rises again from there
    assert await store.pruned_below("a") == 45


async def test_another_instance_reads_the_mark(store: ProgressStore) -> None:
    await store.record_pruned("a", 12)
    other = reopened(store)
    try:
        assert await other.pruned_below("a") == 12
    finally:
        if other is not store:
            await other.close()


async def test_the_leases_view_passes_the_mark_to_the_real_store(store: ProgressStore) -> None:
    if isinstance(store, MemoryProgressStore | FileProgressStore):
        pytest.skip("no lease on this store: hold yields the store itself")
    await store.open()
    async with store.hold(["a"], owner="test:1", ttl=30.0, on_lost=lambda *_: None) as held:
        assert held is not store
        await held.record_pruned("a", 9)
        assert await held.pruned_below("a") == 9
        assert await store.pruned_below("a") == 9


async def test_a_rewind_lowers_the_mark_with_the_watermark(store: ProgressStore) -> None:
    """``indexer reset --delete-rows`` on a sink sharing the store's database."""
    if not isinstance(store, SqliteProgressStore | PostgresProgressStore):
        pytest.skip("only the database stores rewind in a transaction")
    await store.save("a", 100)
    await store.record_pruned("a", 60)
    async with store.rewind("a", 20):
        pass
    assert await store.load("a") == 20
    assert await store.pruned_below("a") == 20


async def test_an_older_sqlite_file_gets_the_marks_table(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # what the release before retention created
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
        assert await store.pruned_below("a") is None
        await store.record_pruned("a", 5)
        assert await store.pruned_below("a") == 5


async def test_an_older_postgres_schema_gets_the_marks_table(
    postgres_dsn: str, pg_schema: str
) -> None:
    async with PostgresProgressStore(postgres_dsn, schema=pg_schema) as store:
        await store.save("a", 12)
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(f'DROP TABLE "{pg_schema}".indexer_pruned')  # as it was before
    finally:
        await conn.close()
    async with PostgresProgressStore(postgres_dsn, schema=pg_schema) as store:
        assert await store.load("a") == 12
        assert await store.pruned_below("a") is None
        await store.record_pruned("a", 5)
        assert await store.pruned_below("a") == 5


async def test_an_older_progress_file_reads_without_marks(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text('{"watermarks": {"a": 3}, "dead_letters": []}\n', encoding="utf-8")
    store = FileProgressStore(path)
    assert await store.load("a") == 3
    assert await store.pruned_below("a") is None
    await store.record_pruned("a", 2)
    assert await FileProgressStore(path).pruned_below("a") == 2

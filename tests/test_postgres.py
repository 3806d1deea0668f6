"""PostgresProgressStore and PostgresSink against a real server (``INDEXER_TEST_POSTGRES_DSN``)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple

import asyncpg
import pytest
from structlog.testing import capture_logs

from indexer import ConfigurationError, IndexerExecutor, ProgressStoreError, WorkerPool
from indexer.cli.config import Config, ProgressConfig, load_config
from indexer.cli.stores import build_store
from indexer.progress import MemoryProgressStore, PostgresProgressStore, SqliteProgressStore
from indexer.sources import MemorySource, SyntheticSource
from reducers import PostgresSink
from workers import TransactionExtractor

COLUMNS = {"id": "BIGINT NOT NULL", "name": "TEXT", "score": "DOUBLE PRECISION"}


class Item(NamedTuple):
    id: int
    name: str
    score: float


@pytest.fixture
async def store(postgres_dsn: str, pg_schema: str) -> AsyncIterator[PostgresProgressStore]:
    s = PostgresProgressStore(postgres_dsn, schema=pg_schema, application_name=pg_schema)
    yield s
    await s.close()


@pytest.fixture
async def db(postgres_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection of the test's own, to look at what the code under test wrote."""
    conn = await asyncpg.connect(postgres_dsn)
    yield conn
    await conn.close()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# --- the store contract ------------------------------------------------------------------------


async def test_contract(store: PostgresProgressStore) -> None:
    assert await store.load("a") is None
    assert await store.watermarks() == {}
    assert await store.dead_letters() == []
    assert await store.save("a", 5) == 5
    assert await store.save("a", 9) == 9
    assert await store.save("a", 3) == 9  # lower keeps the higher
    assert await store.save("a", 9) == 9
    assert await store.load("a") == 9
    assert await store.save("b", 2) == 2
    await store.reset("a", 1)
    assert await store.load("a") == 1
    assert await store.save("a", 4) == 4
    await store.reset("fresh", 7)
    assert await store.watermarks() == {"a": 4, "b": 2, "fresh": 7}


async def test_dead_letters_are_recorded_filtered_and_sorted(store: PostgresProgressStore) -> None:
    before = time.time() - 1  # the server's clock stamps them
    await store.add_dead_letter("a", 7, "boom")
    await store.add_dead_letter("b", 3, "bang")
    await store.add_dead_letter("a", 2, "first")
    await store.add_dead_letter("a", 2, "crash")  # recorded again: the latest error wins
    everything = await store.dead_letters()
    assert [(d.pipeline, d.sequence_number, d.error) for d in everything] == [
        ("a", 2, "crash"),
        ("b", 3, "bang"),
        ("a", 7, "boom"),
    ]
    assert all(isinstance(d.recorded_at, float) for d in everything)
    assert all(before <= d.recorded_at <= time.time() + 1 for d in everything)
    assert [d.sequence_number for d in await store.dead_letters("a")] == [2, 7]
    assert await store.dead_letters("nobody") == []


async def test_values_survive_a_new_store_and_open_close_are_idempotent(
    postgres_dsn: str, pg_schema: str, db: asyncpg.Connection
) -> None:
    await db.execute(f'DROP SCHEMA "{pg_schema}"')  # the store creates it when missing
    first = PostgresProgressStore(postgres_dsn, schema=pg_schema)
    await first.open()
    await first.open()
    assert first.is_open
    await first.save("a", 12)
    await first.reset("b", 30)
    await first.add_dead_letter("a", 4, "boom")
    letters = await first.dead_letters()
    await first.close()
    await first.close()
    assert not first.is_open
    assert await first.load("a") == 12  # a closed store reopens on use
    await first.close()
    async with PostgresProgressStore(postgres_dsn, schema=pg_schema) as second:
        assert await second.watermarks() == {"a": 12, "b": 30}
        assert await second.save("a", 11) == 12
        assert await second.dead_letters() == letters


async def test_transaction_commits_rows_and_watermark_together_or_neither(
    store: PostgresProgressStore, pg_schema: str, db: asyncpg.Connection
) -> None:
    items = f'"{pg_schema}".items'
    async with store.transaction("p", 10) as conn:
        await conn.execute(f"CREATE TABLE {items} (n INT)")
        await conn.executemany(f"INSERT INTO {items} VALUES ($1)", [(1,), (2,)])
    assert await db.fetchval(f"SELECT array_agg(n ORDER BY n) FROM {items}") == [1, 2]
    assert await store.load("p") == 10
    with pytest.raises(RuntimeError, match="sink failed"):
        async with store.transaction("p", 20) as conn:
            await conn.execute(f"INSERT INTO {items} VALUES (3)")
            raise RuntimeError("sink failed")
    assert await store.load("p") == 10
    assert await db.fetchval(f"SELECT count(*) FROM {items}") == 2
    await store.save("p", 50)
    async with store.transaction("p", 30) as conn:  # rise-only inside the transaction too
        await conn.execute(f"INSERT INTO {items} VALUES (4)")
    assert await store.load("p") == 50
    assert await db.fetchval(f"SELECT count(*) FROM {items}") == 3


async def test_rewind_lowers_the_watermark_with_the_rows_or_neither_and_drop_forgets(
    store: PostgresProgressStore, pg_schema: str, db: asyncpg.Connection
) -> None:
    items = f'"{pg_schema}".items'
    async with store.transaction("p", 30) as conn:
        await conn.execute(f"CREATE TABLE {items} (n INT)")
        await conn.executemany(f"INSERT INTO {items} VALUES ($1)", [(10,), (20,)])
    with pytest.raises(RuntimeError, match="delete failed"):
        async with store.rewind("p", 15) as conn:
            await conn.execute(f"DELETE FROM {items} WHERE n >= 15")
            raise RuntimeError("delete failed")
    assert await store.load("p") == 30
    assert await db.fetchval(f"SELECT count(*) FROM {items}") == 2
    async with store.rewind("p", 15) as conn:
        await conn.execute(f"DELETE FROM {items} WHERE n >= 15")
    assert await store.load("p") == 15
    assert await db.fetchval(f"SELECT array_agg(n) FROM {items}") == [10]
    await store.add_dead_letter("p", 3, "boom")
    await store.add_dead_letter("q", 4, "bang")
    await store.save("q", 9)
    await store.drop("p")
    assert await store.watermarks() == {"q": 9}
    assert [d.pipeline for d in await store.dead_letters()] == ["q"]


async def test_store_used_inside_its_own_transaction_fails_fast(
    store: PostgresProgressStore,
) -> None:
    with pytest.raises(ProgressStoreError, match="inside its own transaction"):
        async with store.transaction("p", 1):
            await store.save("p", 2)
    assert await store.load("p") is None


@pytest.mark.parametrize(
    ("where", "reason"),
    [("127.0.0.1:1/test", "Connection refused"), (None, 'database "nope" does not exist')],
)
async def test_unreachable_database_is_one_line_with_the_dsn_masked(
    postgres_dsn: str, where: str | None, reason: str
) -> None:
    server = postgres_dsn.partition("://")[2].rsplit("@", 1)[-1].split("/")[0]
    dsn = f"postgresql://postgres:secret@{where or server + '/nope'}"
    started = time.monotonic()
    with pytest.raises(ProgressStoreError) as caught:
        await PostgresProgressStore(dsn).open()
    message = str(caught.value)
    masked = dsn.replace(":secret@", ":***@")
    assert message.startswith(f"{masked}: cannot open progress database: ")
    assert reason in message
    assert "secret" not in message and "\n" not in message
    assert time.monotonic() - started < 6


async def test_cancelled_transaction_rolls_back_and_bad_values_are_not_retried(
    store: PostgresProgressStore, pg_schema: str, db: asyncpg.Connection
) -> None:
    items = f'"{pg_schema}".items'
    async with store.transaction("p", 1) as conn:
        await conn.execute(f"CREATE TABLE {items} (n INT)")
    inside = asyncio.Event()

    async def stuck() -> None:
        async with store.transaction("p", 2) as conn:
            await conn.execute(f"INSERT INTO {items} VALUES (1)")
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(stuck())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await store.load("p") == 1
    assert await db.fetchval(f"SELECT count(*) FROM {items}") == 0
    with pytest.raises(ProgressStoreError, match=r"cannot save: .*out of int64 range"):
        await asyncio.wait_for(store.save("p", 2**70), 5)  # not a lost connection: no retry
    assert await store.save("p", 3) == 3


def test_bad_schema_name_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="not a valid SQL identifier"):
        PostgresProgressStore("postgresql://x@y/z", schema='x"; DROP TABLE t; --')


def test_build_store_returns_a_postgres_store_for_dsns() -> None:
    for spec in ("postgresql://u@h/db", "postgres://u@h/db"):
        store = build_store(Config(progress=ProgressConfig(store=spec)))
        assert isinstance(store, PostgresProgressStore) and store.dsn == spec


async def _kill_backends_waiting_for_a_lock(
    db: asyncpg.Connection, application_name: str | None, times: int
) -> None:
    """Terminate, ``times`` times, a backend of ``application_name`` that waits for a row lock."""
    sql = (
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'"
    )
    killed: set[int] = set()
    fresh: list[int] = []

    async def waiting() -> bool:
        pids = [r[0] for r in await db.fetch(sql, application_name)]
        fresh[:] = [pid for pid in pids if pid not in killed]
        return bool(fresh)

    for _ in range(times):
        await eventually(waiting)
        assert await db.fetchval("SELECT pg_terminate_backend($1)", fresh[0])
        killed.add(fresh[0])


async def _holding_the_watermark_row(store: PostgresProgressStore, schema: str) -> Any:
    """A connection of its own holding pipeline 'p''s watermark row FOR UPDATE."""
    holder = await asyncpg.connect(store.dsn)
    transaction = holder.transaction()
    await transaction.start()
    await holder.execute(
        f"SELECT * FROM \"{schema}\".indexer_watermarks WHERE pipeline = 'p' FOR UPDATE"
    )
    return holder, transaction


async def test_a_lost_connection_fails_the_store_call_at_once(
    store: PostgresProgressStore, pg_schema: str, db: asyncpg.Connection
) -> None:
    """The store does not retry: one layer (the pipeline's committer) does."""
    await store.save("p", 1)
    holder, transaction = await _holding_the_watermark_row(store, pg_schema)
    try:
        saving = asyncio.create_task(store.save("p", 5))
        await _kill_backends_waiting_for_a_lock(db, store.application_name, 1)
        with pytest.raises(ProgressStoreError, match="cannot save: connection was closed"):
            await asyncio.wait_for(saving, 10)
    finally:
        await transaction.rollback()
        await holder.close()
    assert await store.load("p") == 1


async def test_the_committer_retries_a_save_whose_connection_was_lost(
    store: PostgresProgressStore, pg_schema: str, db: asyncpg.Connection
) -> None:
    """A pipeline's watermark save loses its connection twice: the committer retries it, logs
    each failure, and the run ends with every checkpoint saved."""
    await store.save("p", 0)
    holder, transaction = await _holding_the_watermark_row(store, pg_schema)
    executor = IndexerExecutor(store, handle_signals=False, tune_gc=False)
    executor.register(WorkerPool(TransactionExtractor(), name="p", concurrency=4))
    source = MemorySource([SyntheticSource(seed=1).checkpoint_at(n) for n in range(20)])
    try:
        with capture_logs() as logs:
            running = asyncio.create_task(executor.run(source))
            await _kill_backends_waiting_for_a_lock(db, store.application_name, 2)
            await transaction.rollback()  # let the third try through
            assert await asyncio.wait_for(running, 10) == {"p": 20}
    finally:
        await holder.close()
    assert await store.load("p") == 20
    failures = [entry for entry in logs if entry["event"] == "watermark save failed, retrying"]
    assert [entry["attempt"] for entry in failures] == [1, 2]
    # The killed backend is the one of the fenced transaction the save runs in.
    assert all("connection" in f["error"] and "closed" in f["error"] for f in failures), [
        f["error"] for f in failures
    ]


# --- PostgresSink ------------------------------------------------------------------------------


async def table_rows(db: asyncpg.Connection, schema: str, table: str = "items") -> list[Any]:
    return [tuple(r) for r in await db.fetch(f'SELECT * FROM "{schema}"."{table}" ORDER BY 1')]


async def test_sink_creates_its_table_and_copies_tuples_mappings_and_namedtuples(
    store: PostgresProgressStore, pg_schema: str, db: asyncpg.Connection
) -> None:
    sink = PostgresSink("items", COLUMNS, schema=pg_schema, key=())
    assert sink.uses_store_transaction(store)
    batch: list[Any] = [
        [(1, "a", 1.5), Item(2, "b", 2.5)],
        [{"score": 3.5, "name": "c", "id": 3}, [4, "d", None]],
        [],
    ]
    async with store.transaction("p", 3) as conn:
        await sink.commit_in_transaction(conn, batch)
    columns = await db.fetch(
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = $1 AND table_name = 'items' ORDER BY ordinal_position",
        pg_schema,
    )
    assert [tuple(c) for c in columns] == [
        ("id", "bigint"),
        ("name", "text"),
        ("score", "double precision"),
    ]
    assert await table_rows(db, pg_schema) == [
        (1, "a", 1.5),
        (2, "b", 2.5),
        (3, "c", 3.5),
        (4, "d", None),
    ]
    assert await store.load("p") == 3
    with pytest.raises(RuntimeError):  # a failed transaction keeps neither rows nor watermark
        async with store.transaction("p", 9) as conn:
            await sink.commit_in_transaction(conn, [[(5, "e", 0.0)]])
            raise RuntimeError("later failure")
    assert len(await table_rows(db, pg_schema)) == 4 and await store.load("p") == 3


async def test_sink_with_key_upserts_idempotently(
    postgres_dsn: str, pg_schema: str, db: asyncpg.Connection
) -> None:
    sink = PostgresSink("items", COLUMNS, dsn=postgres_dsn, schema=pg_schema, key=["id"])
    assert not sink.uses_store_transaction(MemoryProgressStore())
    batch: list[Any] = [[(1, "a", 1.0), (2, "b", 2.0)], [(1, "a2", 1.1)]]  # last row of a key wins
    await sink.commit(batch)
    await sink.commit(batch)
    assert await table_rows(db, pg_schema) == [(1, "a2", 1.1), (2, "b", 2.0)]
    await sink.commit([[Item(2, "b2", 9.0), (3, "c", 3.0)]])
    assert await table_rows(db, pg_schema) == [(1, "a2", 1.1), (2, "b2", 9.0), (3, "c", 3.0)]
    index = await db.fetchval(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND indexname = 'items_key'",
        pg_schema,
    )
    assert "UNIQUE" in index
    await sink.close()
    await sink.close()


async def test_sink_shares_the_store_transaction_only_for_the_same_database(
    postgres_dsn: str, tmp_path: Path
) -> None:
    store = PostgresProgressStore("postgresql://postgres:pw@127.0.0.1:5432/test", schema="x")
    same = [None, "postgres://postgres:other@localhost/test?sslmode=disable"]
    for dsn in same:
        assert PostgresSink("t", COLUMNS, dsn=dsn).uses_store_transaction(store)
    for dsn in ["postgresql://postgres@127.0.0.1:5432/other", "postgresql://bob@127.0.0.1/test"]:
        assert not PostgresSink("t", COLUMNS, dsn=dsn).uses_store_transaction(store)
    sqlite = SqliteProgressStore(tmp_path / "progress.db")
    assert not PostgresSink("t", COLUMNS, dsn=postgres_dsn).uses_store_transaction(sqlite)
    assert not PostgresSink("t", COLUMNS).uses_store_transaction(sqlite)
    with pytest.raises(ConfigurationError, match="'t' has no dsn"):
        await PostgresSink("t", COLUMNS).commit([[(1, "a", 1.0)]])
    with pytest.raises(ConfigurationError, match="not a valid SQL identifier"):
        PostgresSink("bad name", COLUMNS)


async def test_end_to_end_exactly_the_transactions_of_checkpoints_0_to_199(
    store: PostgresProgressStore, pg_schema: str, db: asyncpg.Connection
) -> None:
    extractor = TransactionExtractor()
    sink = PostgresSink("transactions", TransactionExtractor.columns, schema=pg_schema)
    assert sink.uses_store_transaction(store)  # no key: a replayed batch would show twice
    executor = IndexerExecutor(store, handle_signals=False, tune_gc=False)
    executor.register(WorkerPool(TransactionExtractor(), reducer=sink, concurrency=8))
    result = await asyncio.wait_for(executor.run(SyntheticSource(seed=1), last_checkpoint=199), 10)
    assert result == {extractor.name: 200}
    assert await store.load(extractor.name) == 200
    source = SyntheticSource(seed=1)
    expected: list[tuple[Any, ...]] = []
    for n in range(200):
        expected.extend(await extractor.process_checkpoint(source.checkpoint_at(n)))
    expected.sort()
    rows = await db.fetch(f'SELECT * FROM "{pg_schema}".transactions')
    assert sorted(tuple(r) for r in rows) == expected


# --- progress.schema through the real command ---------------------------------------------------


def test_progress_schema_is_for_postgresql_only(tmp_path: Path) -> None:
    path = tmp_path / "cfg.toml"
    path.write_text('[progress]\nstore = "sqlite:x.db"\nschema = "indexer"\n')
    with pytest.raises(ConfigurationError, match=r"progress.schema is for a postgresql:// store"):
        load_config(path, {})


def test_indexer_run_keeps_its_tables_in_the_configured_schema(
    tmp_path: Path, postgres_dsn: str, pg_schema: str
) -> None:
    """``[progress] schema``: watermarks and dead letters (and chunk claims) live there, and
    ``indexer status`` reads them back from there; nothing is written to ``public``."""
    indexer = str(Path(sys.executable).with_name("indexer"))
    feed = tmp_path / "feed"
    generated = subprocess.run(
        [indexer, "generate", "--out", str(feed), "--count", "50"], capture_output=True, text=True
    )
    assert generated.returncode == 0, generated.stderr
    pipeline = f"txs_{pg_schema}"
    columns = (
        '{ checkpoint = "BIGINT", digest = "TEXT", sender = "TEXT", event_count = "BIGINT", '
        'timestamp_ms = "BIGINT" }'
    )
    config = tmp_path / "cfg.toml"
    config.write_text(
        f"""
[source]
feed = "{feed}"
follow = false

[progress]
store = "{postgres_dsn}"
schema = "{pg_schema}"

[metrics]
enabled = false

[pipelines.{pipeline}]
worker = "workers:TransactionExtractor"

[pipelines.{pipeline}.reducer]
class = "reducers:PostgresSink"
options = {{ table = "txs", schema = "{pg_schema}", columns = {columns} }}
"""
    )
    done = subprocess.run(
        [indexer, "run", "-c", str(config), "--last-checkpoint", "49"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    status = subprocess.run(
        [indexer, "status", "-c", str(config), "--json"], capture_output=True, text=True
    )
    assert status.returncode == 0, status.stderr
    (row,) = json.loads(status.stdout)["pipelines"]
    assert row["watermark"] == 50

    async def look() -> tuple[Any, Any, int]:
        conn = await asyncpg.connect(postgres_dsn)
        try:
            here = await conn.fetchval(
                f'SELECT next_checkpoint FROM "{pg_schema}".indexer_watermarks WHERE pipeline = $1',
                pipeline,
            )
            # Two statements: one naming a missing table fails to plan, whatever guards it.
            public = await conn.fetchval(
                "SELECT to_regclass('public.indexer_watermarks') IS NOT NULL"
            ) and await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM public.indexer_watermarks WHERE pipeline = $1)",
                pipeline,
            )
            rows = await conn.fetchval(f'SELECT count(DISTINCT checkpoint) FROM "{pg_schema}".txs')
            return here, public, rows
        finally:
            await conn.close()

    assert asyncio.run(look()) == (50, False, 50)


async def test_pool_reset_rolls_back_a_transaction_left_open(postgres_dsn: str) -> None:
    """The stores' pools skip asyncpg's session reset but never hand out a connection that is
    still inside a transaction."""
    from indexer._postgres import skip_session_reset

    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=1, reset=skip_session_reset)
    try:
        async with pool.acquire() as conn:
            backend = await conn.fetchval("SELECT pg_backend_pid()")
            await conn.execute("BEGIN")
            await conn.execute("CREATE TEMP TABLE left_open (n INT)")
            assert conn.is_in_transaction()
        async with pool.acquire() as again:
            assert await again.fetchval("SELECT pg_backend_pid()") == backend  # the same one
            assert not again.is_in_transaction()
            assert await again.fetchval("SELECT to_regclass('pg_temp.left_open')") is None
    finally:
        await pool.close()

"""reducer: batching and committing rows into SQLite through the framework, against bare
inserts of the same rows in the same batches (one executemany and one commit per batch, the
same database settings). PostgreSQL joins when ``postgres_dsn`` is given: PostgresSink with
the PostgresProgressStore (one transaction per batch, rows and watermark) against a bare asyncpg
COPY and watermark upsert per batch."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from ..._loop import run_on
from ...checkpoint import Checkpoint
from ...executor import IndexerExecutor
from ...pipeline import WorkerPool
from ...progress import PostgresProgressStore, ProgressStore, SqliteProgressStore
from ...reducer import Reducer
from ...sources import MemorySource
from ...worker import Worker
from ._common import Result, best_interleaved, checkpoints

BATCH = 500  # checkpoints per commit (about 4,000 rows)


class Precomputed(Worker[Checkpoint, list[Any]]):
    """Returns rows computed beforehand, so both sides write exactly the same rows."""

    name = "rows"

    def __init__(self, rows: list[list[Any]]) -> None:
        self.rows = rows

    async def process_checkpoint(self, checkpoint: Checkpoint) -> list[Any]:
        return self.rows[checkpoint.sequence_number]


def transaction_rows(items: list[Checkpoint]) -> list[list[tuple[Any, ...]]]:
    from workers import TransactionExtractor

    extractor = TransactionExtractor()
    return [asyncio.run(_extract(extractor, items))][0]


async def _extract(extractor: Any, items: list[Checkpoint]) -> list[list[tuple[Any, ...]]]:
    return [list(map(tuple, await extractor.process_checkpoint(cp))) for cp in items]


def _columns() -> dict[str, str]:
    from workers import TransactionExtractor

    return TransactionExtractor.columns


def bare_sqlite(path: Path, rows: list[list[tuple[Any, ...]]]) -> float:
    """executemany + watermark update + commit per batch, WAL and synchronous=FULL."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    cols = ", ".join(f"{k} {v}" for k, v in _columns().items())
    db.execute(f"CREATE TABLE t ({cols})")
    db.execute("CREATE TABLE w (pipeline TEXT PRIMARY KEY, next_checkpoint INTEGER)")
    marks = ", ".join("?" for _ in _columns())
    started = time.perf_counter()
    for begin in range(0, len(rows), BATCH):
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            f"INSERT INTO t VALUES ({marks})", [r for m in rows[begin : begin + BATCH] for r in m]
        )
        db.execute("INSERT OR REPLACE INTO w VALUES ('rows', ?)", (begin + BATCH,))
        db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return elapsed


async def framework(
    store: ProgressStore, sink: Reducer[Any], items: list[Checkpoint], rows: list[Any]
) -> float:
    """The pipeline writing the precomputed rows through ``sink`` into ``store``'s database."""
    executor = IndexerExecutor(store, handle_signals=False)
    executor.register(WorkerPool(Precomputed(rows), concurrency=8, reducer=sink))
    source = MemorySource(items)  # encodes each checkpoint once for its size: not timed
    started = time.perf_counter()
    result = await executor.run(source)
    elapsed = time.perf_counter() - started
    assert result["rows"] == len(items), result
    return elapsed


async def framework_sqlite(path: Path, items: list[Checkpoint], rows: list[Any]) -> float:
    from reducers import SqliteSink

    sink = SqliteSink("t", _columns(), max_batch_size=BATCH, max_batch_age=60)
    return await framework(SqliteProgressStore(path), sink, items, rows)


async def bare_postgres(dsn: str, schema: str, rows: list[list[tuple[Any, ...]]]) -> float:
    """COPY + watermark upsert + commit per batch on one asyncpg connection."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        cols = ", ".join(f'"{k}" {v}' for k, v in _columns().items())
        await conn.execute(f'CREATE TABLE "{schema}".bare ({cols})')
        await conn.execute(
            f'CREATE TABLE "{schema}".w (pipeline TEXT PRIMARY KEY, next_checkpoint BIGINT)'
        )
        upsert = (
            f'INSERT INTO "{schema}".w VALUES ($1, $2) ON CONFLICT (pipeline) '
            "DO UPDATE SET next_checkpoint = excluded.next_checkpoint"
        )
        names = list(_columns())
        started = time.perf_counter()
        for begin in range(0, len(rows), BATCH):
            records = [r for m in rows[begin : begin + BATCH] for r in m]
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "bare", records=records, columns=names, schema_name=schema
                )
                await conn.execute(upsert, "rows", begin + BATCH)
        return time.perf_counter() - started
    finally:
        await conn.close()


async def framework_postgres(
    dsn: str, schema: str, table: str, items: list[Checkpoint], rows: list[Any]
) -> float:
    from reducers import PostgresSink

    sink = PostgresSink(table, _columns(), schema=schema, max_batch_size=BATCH, max_batch_age=60)
    return await framework(PostgresProgressStore(dsn, schema=schema), sink, items, rows)


async def _postgres_rounds(
    dsn: str, rounds: int, items: list[Checkpoint], rows: list[Any]
) -> tuple[float, float]:
    import asyncpg

    schema = f"indexer_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    try:
        bare = framework = float("inf")
        for round_ in range(rounds):
            await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await admin.execute(f'CREATE SCHEMA "{schema}"')
            bare = min(bare, await bare_postgres(dsn, schema, rows))
            framework = min(
                framework, await framework_postgres(dsn, schema, f"fw_{round_}", items, rows)
            )
        return bare, framework
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


def run(quick: bool, postgres_dsn: str | None = None, event_loop: str = "auto") -> list[Result]:
    count = 5_000 if quick else 40_000
    rounds = 2 if quick else 3
    items = checkpoints(count)
    rows = transaction_rows(items)
    total_rows = sum(map(len, rows))
    details = {"checkpoints": count, "rows": total_rows, "checkpoints_per_batch": BATCH}
    with tempfile.TemporaryDirectory(prefix="indexer-bench-") as tmp:
        fresh = itertools.count()  # every round writes a database of its own
        best = best_interleaved(
            rounds,
            {
                "bare": lambda: bare_sqlite(Path(tmp) / f"bare-{next(fresh)}.db", rows),
                "framework": lambda: run_on(
                    event_loop, framework_sqlite(Path(tmp) / f"fw-{next(fresh)}.db", items, rows)
                ),
            },
        )
    sides = {"reducer-sqlite": (best["framework"], best["bare"], "executemany")}
    if postgres_dsn:
        pg_bare, pg_framework = run_on(
            event_loop, _postgres_rounds(postgres_dsn, rounds, items, rows)
        )
        sides["reducer-postgres"] = (pg_framework, pg_bare, "asyncpg COPY")
    return [
        Result.throughput(
            scenario,
            total_rows,
            seconds,
            bare_seconds,
            unit="rows/s",
            bar=0.7,
            details={**details, "reference": f"{how} + commit per batch"},
        )
        for scenario, (seconds, bare_seconds, how) in sides.items()
    ]

"""The bare loops the pipeline scenarios time ``indexer run`` against: the same job (one row per
transaction, 500 checkpoints per commit with the watermark, the same durability) in one plain
loop. Run as a script, so that it imports nothing of the framework but ``indexer.checkpoint``::

    python -P _bare_pipeline.py sqlite DATABASE FEED START STOP
    python -P _bare_pipeline.py postgres SCHEMA FEED START STOP EVENT_LOOP

It writes checkpoints ``START`` to ``STOP - 1`` of ``FEED`` (``{n}.chk`` files) into the table
``transactions`` and its watermark into ``progress`` (one row per loop, so that two loops can
share a database); the PostgreSQL DSN is read from ``INDEXER_BENCH_BARE_DSN``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import msgspec

from indexer.checkpoint import Checkpoint

#: Checkpoints per commit.
BATCH = 500
TABLE = "transactions"
#: What ``workers:TransactionExtractor`` emits, as the sinks create it.
COLUMNS = {
    "checkpoint": "BIGINT NOT NULL",
    "digest": "TEXT NOT NULL",
    "sender": "TEXT NOT NULL",
    "event_count": "INTEGER NOT NULL",
    "timestamp_ms": "BIGINT NOT NULL",
}
DSN_VARIABLE = "INDEXER_BENCH_BARE_DSN"
_READ = 1 << 16


def batches(feed: str, start: int, stop: int) -> Iterator[tuple[int, list[tuple[Any, ...]]]]:
    """(next checkpoint, rows) for every ``BATCH`` checkpoints of ``start`` .. ``stop - 1``."""
    decode = msgspec.msgpack.Decoder(Checkpoint).decode
    prefix = f"{feed}{os.sep}"
    for begin in range(start, stop, BATCH):
        end = min(stop, begin + BATCH)
        rows: list[tuple[Any, ...]] = []
        for n in range(begin, end):
            fd = os.open(f"{prefix}{n}.chk", os.O_RDONLY)
            try:
                data = os.read(fd, _READ)
                if len(data) == _READ:  # a large file: the rest of it
                    parts = [data]
                    while part := os.read(fd, _READ):
                        parts.append(part)
                    data = b"".join(parts)
            finally:
                os.close(fd)
            checkpoint = decode(data)
            ts = checkpoint.timestamp_ms
            rows += [
                (n, tx.digest, tx.sender, len(tx.events), ts) for tx in checkpoint.transactions
            ]
        yield end, rows


def bare_sqlite(path: str, feed: str, start: int, stop: int) -> None:
    """BEGIN IMMEDIATE, executemany, watermark upsert, COMMIT per batch (WAL, synchronous=FULL).
    The write lock is retried every millisecond, as the framework does, when another loop
    holds it."""
    import sqlite3

    def retried(statement: str) -> Any:
        deadline = time.monotonic() + 60
        while True:
            try:
                return db.execute(statement).fetchone()
            except sqlite3.OperationalError as exc:
                busy = "locked" in str(exc) or "busy" in str(exc)
                if not busy or time.monotonic() > deadline:
                    raise
                time.sleep(0.001)

    db = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        if retried("PRAGMA journal_mode=WAL") != ("wal",):
            raise RuntimeError(f"{path}: not in WAL mode")
        db.execute("PRAGMA synchronous=FULL")
        columns = ", ".join(f"{name} {sql}" for name, sql in COLUMNS.items())
        retried(f"CREATE TABLE IF NOT EXISTS {TABLE} ({columns})")
        retried(
            "CREATE TABLE IF NOT EXISTS progress "
            "(pipeline TEXT PRIMARY KEY, next_checkpoint INTEGER NOT NULL)"
        )
        insert = f"INSERT INTO {TABLE} VALUES ({', '.join('?' for _ in COLUMNS)})"
        upsert = (
            "INSERT INTO progress VALUES (?, ?) ON CONFLICT (pipeline) "
            "DO UPDATE SET next_checkpoint = excluded.next_checkpoint"
        )
        name = f"bare-{start}"
        for next_checkpoint, rows in batches(feed, start, stop):
            retried("BEGIN IMMEDIATE")
            db.executemany(insert, rows)
            db.execute(upsert, (name, next_checkpoint))
            db.execute("COMMIT")
    finally:
        db.close()


async def bare_postgres(dsn: str, schema: str, feed: str, start: int, stop: int) -> None:
    """copy_records_to_table and a watermark upsert in one transaction per batch."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        columns = ", ".join(f'"{name}" {sql}' for name, sql in COLUMNS.items())
        async with conn.transaction():  # two loops at once: one creates, the other waits
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", schema)
            await conn.execute(f'CREATE TABLE IF NOT EXISTS "{schema}".{TABLE} ({columns})')
            await conn.execute(
                f'CREATE TABLE IF NOT EXISTS "{schema}".progress '
                "(pipeline TEXT PRIMARY KEY, next_checkpoint BIGINT NOT NULL)"
            )
        upsert = (
            f'INSERT INTO "{schema}".progress VALUES ($1, $2) ON CONFLICT (pipeline) '
            "DO UPDATE SET next_checkpoint = excluded.next_checkpoint"
        )
        names = list(COLUMNS)
        name = f"bare-{start}"
        for next_checkpoint, rows in batches(feed, start, stop):
            async with conn.transaction():
                await conn.copy_records_to_table(
                    TABLE, records=rows, columns=names, schema_name=schema
                )
                await conn.execute(upsert, name, next_checkpoint)
    finally:
        await conn.close()


def main(argv: list[str]) -> None:
    kind, target, feed, start, stop = argv[:5]
    if kind == "sqlite":
        bare_sqlite(target, feed, int(start), int(stop))
        return
    import asyncio

    factory = None
    if argv[5:] != ["asyncio"]:  # auto or uvloop: uvloop when installed, as indexer run does
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            if argv[5:] == ["uvloop"]:
                raise
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(bare_postgres(os.environ[DSN_VARIABLE], target, feed, int(start), int(stop)))


if __name__ == "__main__":
    main(sys.argv[1:])

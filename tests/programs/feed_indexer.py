"""A small indexer program for the end-to-end tests: a directory feed into an SQLite table.

It runs an ``IndexerExecutor`` (signal handling on) over ``LocalDirectorySource(--feed)`` with a
``SqliteProgressStore(--db)`` and one pipeline whose worker sleeps ``--delay`` seconds per
checkpoint and whose transactional reducer inserts one row per checkpoint into ``rows`` of the
same database, in the transaction that also raises the watermark.

stdout, one item per line, each flushed:
    resume <n>              the watermark saved before this run (0 when none)
    started                 the first checkpoint is being processed
    processed <json list>   the checkpoints whose processing completed in this run (sorted)
    <json dict>             the watermarks ``run`` returned (last line; only on success)
stderr: the framework's structlog lines as JSON, then on failure one line ``error: <message>``
(``aborted: <message>`` for ShutdownAborted).

Exit codes: 0 when ``run`` returns, 1 on ``indexer.IndexerError``, 3 on anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import traceback
from typing import Any

import structlog

import indexer
from indexer import Checkpoint, IndexerExecutor, TransactionalReducer, Worker, WorkerPool
from indexer.progress import SqliteProgressStore
from indexer.sources import LocalDirectorySource

PIPELINE = "feed_rows"


class SleepyWorker(Worker[Checkpoint, int]):
    """Sleeps ``delay`` seconds and returns the sequence number; may block forever instead."""

    name = PIPELINE

    def __init__(self, delay: float, block_from: int | None) -> None:
        self.delay = delay
        self.block_from = block_from
        self.processed: list[int] = []
        self._announced = False
        self._never = asyncio.Event()

    async def process_checkpoint(self, checkpoint: Checkpoint) -> int:
        if not self._announced:
            self._announced = True
            print("started", flush=True)
        n = checkpoint.sequence_number
        if self.block_from is not None and n >= self.block_from:
            await self._never.wait()
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        self.processed.append(n)
        return n


class RowsReducer(TransactionalReducer[int]):
    """One row per checkpoint, written in the progress store's transaction."""

    async def commit_in_transaction(self, connection: Any, batch: list[int]) -> None:
        await connection.executemany(
            "INSERT INTO rows (checkpoint) VALUES (?)", [(n,) for n in batch]
        )


def create_rows_table(db: str) -> None:
    conn = sqlite3.connect(db)
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS rows (checkpoint INTEGER)")
        conn.commit()
    finally:
        conn.close()


async def index(args: argparse.Namespace, worker: SleepyWorker) -> dict[str, int]:
    store = SqliteProgressStore(args.db)
    source = LocalDirectorySource(args.feed, poll_interval=0.01, follow=args.follow)
    try:
        saved = await store.load(PIPELINE)
        print(f"resume {saved if saved is not None else 0}", flush=True)
        executor = IndexerExecutor(store)  # handle_signals=True
        reducer = RowsReducer(max_batch_size=args.batch_size, max_batch_age=0.05)
        executor.register(WorkerPool(worker, concurrency=args.concurrency, reducer=reducer))
        return await executor.run(source, last_checkpoint=args.last_checkpoint)
    finally:
        await source.close()
        await store.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feed", required=True, help="directory of {n}.chk files")
    parser.add_argument("--db", required=True, help="SQLite database (progress and rows)")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per checkpoint")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=10, help="reducer max_batch_size")
    parser.add_argument("--last-checkpoint", type=int, default=None)
    parser.add_argument(
        "--follow", action=argparse.BooleanOptionalAction, default=True, help="tail the feed"
    )
    parser.add_argument(
        "--block-forever",
        action="store_true",
        help="the worker waits forever (on an event that never fires) instead of finishing",
    )
    parser.add_argument(
        "--block-from",
        type=int,
        default=0,
        help="with --block-forever, only checkpoints from this one on block",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    create_rows_table(args.db)
    worker = SleepyWorker(args.delay, args.block_from if args.block_forever else None)
    try:
        watermarks = asyncio.run(index(args, worker))
    except indexer.ShutdownAborted as exc:
        print(f"aborted: {exc}", file=sys.stderr, flush=True)
        return 1
    except indexer.IndexerError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    except BaseException:
        traceback.print_exc()
        return 3
    print(f"processed {json.dumps(sorted(worker.processed))}", flush=True)
    print(json.dumps(watermarks), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

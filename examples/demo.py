"""The demo behind ``make demo``: a generated local feed indexed into the embedded SQLite store.

Writes a synthetic feed of ``--count`` checkpoints to ``demo/feed`` (once), then runs two
pipelines over it into ``demo/index.db``: ready-made TransactionExtractor rows into a SqliteSink
(exactly once: the rows and the watermark share one transaction), and an inline worker that
counts events. Run it again and it resumes where it stopped (Ctrl+C stops it gracefully).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import time
from pathlib import Path

from indexer import Checkpoint, IndexerExecutor, Worker, WorkerPool
from indexer.progress import SqliteProgressStore
from indexer.sources import LocalDirectorySource, SyntheticSource, write_feed
from reducers import SqliteSink
from workers import TransactionExtractor


class EventCounter(Worker[Checkpoint, int]):
    """Counts the events of each checkpoint (no reducer: only the watermark is kept)."""

    name = "event_count"

    def __init__(self) -> None:
        self.events = 0

    async def process_checkpoint(self, checkpoint: Checkpoint) -> int:
        count = sum(len(tx.events) for tx in checkpoint.transactions)
        self.events += count
        return count


async def main(directory: Path, count: int) -> None:
    feed = directory / "feed"
    if not (feed / f"{count - 1}.chk").exists():
        started = time.perf_counter()
        await write_feed(SyntheticSource(seed=1), feed, count=count)
        print(f"generated {count} checkpoints in {feed} in {time.perf_counter() - started:.1f}s")
    store = SqliteProgressStore(directory / "index.db")
    executor = IndexerExecutor(store)
    counter = EventCounter()
    sink = SqliteSink("transactions", TransactionExtractor.columns, max_batch_size=500)
    executor.register(WorkerPool(TransactionExtractor(), concurrency=4, reducer=sink))
    executor.register(WorkerPool(counter, concurrency=4))
    source = LocalDirectorySource(feed, follow=False)
    started = time.perf_counter()
    watermarks = await executor.run(source, last_checkpoint=count - 1)
    elapsed = time.perf_counter() - started
    await source.close()
    with sqlite3.connect(directory / "index.db") as db:
        (rows,) = db.execute("SELECT count(*) FROM transactions").fetchone()
    print(f"indexed up to {watermarks} in {elapsed:.2f}s; {rows} transaction rows in SQLite")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("demo"))
    parser.add_argument("--count", type=int, default=20_000)
    args = parser.parse_args()
    asyncio.run(main(args.dir, args.count))

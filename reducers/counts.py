"""CounterSink: merged ``Counts`` added into running totals in a SQLite table."""

from __future__ import annotations

import os
import sqlite3
from typing import Any

import aiosqlite

from indexer import ConfigurationError
from indexer.sinks import SqliteDatabaseSink, insert_rows, on_thread
from workers.counter import Counts, merge_counts


class CounterSink(SqliteDatabaseSink[Counts]):
    """Merges each batch's ``Counts`` into one and adds it to ``table``'s totals.

    The table is ``(dimension TEXT, key TEXT, count INTEGER, PRIMARY KEY (dimension, key))``,
    created when missing; each commit upserts ``count = count + excluded.count``. Because totals
    are incremented, a batch committed twice is counted twice: only the transactional
    combination is exactly right after a crash. That is when ``path`` is None or names the
    progress store's own SQLite file (``SqliteProgressStore``): the batch and the watermark then
    commit in one transaction. With another ``path`` the sink keeps its own connection and a
    crash between its commit and the watermark save over-counts the batch in flight.

    Under a pipeline's ``retention`` the totals count the newest checkpoints only: the sink
    also keeps each checkpoint's counts in ``{table}_by_checkpoint`` (the ``Counts`` must carry
    their ``checkpoint``, as ``ActivityCounter``'s do), and a prune takes the old checkpoints'
    counts back out of the totals (a key whose total falls to 0 goes) and deletes them, a few
    checkpoints (about ``prune_chunk_size`` rows) per transaction. What was counted before the
    retention was set stays in the totals.
    """

    def __init__(
        self,
        table: str = "activity_counts",
        path: str | os.PathLike[str] | None = None,
        **limits: Any,
    ) -> None:
        super().__init__(path, **limits)
        if not table.isidentifier():
            raise ConfigurationError(f"CounterSink table name {table!r} is not an identifier")
        self.table = table
        self._ddl = (
            f"CREATE TABLE IF NOT EXISTS {table} (dimension TEXT NOT NULL, key TEXT NOT NULL, "
            "count INTEGER NOT NULL, PRIMARY KEY (dimension, key))"
        )
        self._insert = f"INSERT INTO {table} (dimension, key, count)"
        self._on_conflict = (
            f"ON CONFLICT (dimension, key) DO UPDATE SET count = {table}.count + excluded.count"
        )
        self.by_checkpoint = by_checkpoint = f"{table}_by_checkpoint"
        self._ledger_ddl = (
            f"CREATE TABLE IF NOT EXISTS {by_checkpoint} (checkpoint INTEGER NOT NULL, "
            "dimension TEXT NOT NULL, key TEXT NOT NULL, count INTEGER NOT NULL, "
            "PRIMARY KEY (checkpoint, dimension, key))"
        )
        self._ledger_insert = f"INSERT INTO {by_checkpoint} (checkpoint, dimension, key, count)"
        self._ledger_on_conflict = (
            "ON CONFLICT (checkpoint, dimension, key) "
            f"DO UPDATE SET count = {by_checkpoint}.count + excluded.count"
        )

    @property
    def label(self) -> str:
        return f"CounterSink {self.table!r}"

    def message_size(self, message: Counts) -> int:
        return sum(len(d) + len(k) + 8 for d, k in message)

    def enable_pruning(self) -> None:
        """Keep counts by checkpoint from now on, for ``prune`` to take back out."""
        self.prunes = True

    async def write(self, connection: aiosqlite.Connection, batch: list[Counts]) -> None:
        # Every time: a rolled-back first transaction also rolls back the CREATE TABLE.
        totals = merge_counts(batch)  # any mappings of (dimension, key) -> count will do
        rows = [(d, k, n) for (d, k), n in totals.items() if n]
        ledger = self._by_checkpoint(batch) if self.prunes else []

        def write(db: sqlite3.Connection) -> None:  # one hop to the connection's thread
            db.execute(self._ddl)
            insert_rows(db, self._insert, 3, rows, self._on_conflict)
            if self.prunes:
                db.execute(self._ledger_ddl)
                insert_rows(db, self._ledger_insert, 4, ledger, self._ledger_on_conflict)

        await on_thread(connection, write)

    def _by_checkpoint(self, batch: list[Counts]) -> list[tuple[int, str, str, int]]:
        """The batch's counts as ``(checkpoint, dimension, key, count)`` rows."""
        rows: list[tuple[int, str, str, int]] = []
        for counts in batch:
            checkpoint = getattr(counts, "checkpoint", None)
            if checkpoint is None:
                raise ConfigurationError(
                    f"{self.label} under a retention needs Counts that carry their checkpoint "
                    "(ActivityCounter's do)"
                )
            rows.extend((checkpoint, d, k, n) for (d, k), n in counts.items() if n)
        return rows

    async def delete_below(
        self, connection: aiosqlite.Connection, checkpoint: int, limit: int
    ) -> int:
        """Take the counts of the lowest checkpoints below ``checkpoint`` (about ``limit``
        rows of them, whole checkpoints) out of the totals and delete them; how many went."""
        table, ledger = self.table, self.by_checkpoint
        subtract = (
            f"UPDATE {table} SET count = {table}.count - gone.n FROM (SELECT dimension, key, "
            f"sum(count) AS n FROM {ledger} WHERE checkpoint < ? GROUP BY dimension, key) AS "
            f"gone WHERE {table}.dimension = gone.dimension AND {table}.key = gone.key"
        )
        emptied = (
            f"DELETE FROM {table} WHERE count <= 0 AND (dimension, key) IN "
            f"(SELECT dimension, key FROM {ledger} WHERE checkpoint < ?)"
        )

        def run(db: sqlite3.Connection) -> int:
            exists = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
            if db.execute(exists, (ledger,)).fetchone() is None:
                return 0
            (lowest,) = db.execute(f"SELECT min(checkpoint) FROM {ledger}").fetchone()
            if lowest is None or lowest >= checkpoint:
                return 0
            beyond = db.execute(
                f"SELECT checkpoint FROM {ledger} WHERE checkpoint < ? ORDER BY checkpoint "
                "LIMIT 1 OFFSET ?",
                (checkpoint, limit),
            ).fetchone()
            upto = checkpoint if beyond is None else max(beyond[0], lowest + 1)
            db.execute(subtract, (upto,))
            db.execute(emptied, (upto,))
            return db.execute(f"DELETE FROM {ledger} WHERE checkpoint < ?", (upto,)).rowcount

        return await on_thread(connection, run)

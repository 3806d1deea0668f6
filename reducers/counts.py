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

    @property
    def label(self) -> str:
        return f"CounterSink {self.table!r}"

    def message_size(self, message: Counts) -> int:
        return sum(len(d) + len(k) + 8 for d, k in message)

    async def write(self, connection: aiosqlite.Connection, batch: list[Counts]) -> None:
        # Every time: a rolled-back first transaction also rolls back the CREATE TABLE.
        totals = merge_counts(batch)  # any mappings of (dimension, key) -> count will do
        rows = [(d, k, n) for (d, k), n in totals.items() if n]

        def write(db: sqlite3.Connection) -> None:  # one hop to the connection's thread
            db.execute(self._ddl)
            insert_rows(db, self._insert, 3, rows, self._on_conflict)

        await on_thread(connection, write)

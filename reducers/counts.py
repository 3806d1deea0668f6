"""CounterSink: merged ``Counts`` added into running totals in a SQLite table."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import aiosqlite

from indexer import ConfigurationError, Reducer
from indexer._sqlite import connect
from indexer.progress import SqliteProgressStore
from workers.counter import Counts, merge_counts


class CounterSink(Reducer[Counts]):
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
        super().__init__(**limits)
        if not table.isidentifier():
            raise ConfigurationError(f"CounterSink table name {table!r} is not an identifier")
        self.table = table
        self.path = Path(path) if path is not None else None
        self._conn: aiosqlite.Connection | None = None
        self._ddl = (
            f"CREATE TABLE IF NOT EXISTS {table} (dimension TEXT NOT NULL, key TEXT NOT NULL, "
            "count INTEGER NOT NULL, PRIMARY KEY (dimension, key))"
        )
        self._upsert = (
            f"INSERT INTO {table} (dimension, key, count) VALUES (?, ?, ?) "
            f"ON CONFLICT (dimension, key) DO UPDATE SET count = {table}.count + excluded.count"
        )

    def check_store(self, store: Any) -> None:
        if self.path is None and not self.uses_store_transaction(store):
            raise ConfigurationError(
                f"CounterSink {self.table!r}: no path is set and the progress store "
                f"({type(store).__name__}) is not SQLite; set path or use a SQLite store"
            )

    def uses_store_transaction(self, store: Any) -> bool:
        if not isinstance(store, SqliteProgressStore):
            return False
        return self.path is None or self.path.resolve() == store.path.resolve()

    def message_size(self, message: Counts) -> int:
        return sum(len(d) + len(k) + 8 for d, k in message)

    async def _write(self, connection: aiosqlite.Connection, batch: list[Counts]) -> None:
        # Every time: a rolled-back first transaction also rolls back the CREATE TABLE.
        await connection.execute(self._ddl)
        totals = merge_counts(batch)  # any mappings of (dimension, key) -> count will do
        rows = [(d, k, n) for (d, k), n in totals.items() if n]
        if rows:
            await connection.executemany(self._upsert, rows)

    async def commit_in_transaction(self, connection: Any, batch: list[Counts]) -> None:
        await self._write(connection, batch)

    async def commit(self, batch: list[Counts]) -> None:
        if self.path is None:
            raise ConfigurationError(
                f"CounterSink {self.table!r} has no path and the progress store is not SQLite"
            )
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = await connect(self.path)
        await self._conn.execute("BEGIN IMMEDIATE")
        try:
            await self._write(self._conn, batch)
        except BaseException:
            await self._conn.execute("ROLLBACK")
            raise
        await self._conn.execute("COMMIT")

    async def close(self) -> None:
        """Close the sink's own connection, if it opened one."""
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

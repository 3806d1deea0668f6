"""SqliteSink: rows into a SQLite table, exactly once when it shares the progress store's file."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import aiosqlite

from indexer import ConfigurationError
from indexer.sinks import SqliteDatabaseSink, insert_rows, on_thread

Row = Sequence[Any] | Mapping[str, Any]


class SqliteSink(SqliteDatabaseSink[Sequence[Row]]):
    """Inserts the rows of each message (a list of rows) into ``table``.

    ``columns`` maps column names to SQL types; the table is created when missing. Rows are
    tuples in column order or mappings by column name. With ``key`` (column names) rows are
    upserted, so replays are idempotent. ``checkpoint_column`` (when ``columns`` has it) holds
    each row's checkpoint, so that ``indexer reset --delete-rows`` can delete what a re-index
    writes again, and a pipeline's ``retention`` prune the rows of old checkpoints (in chunks
    of ``prune_chunk_size`` rows, the column then indexed). When ``path`` is None or names the
    progress store's
    own SQLite file, each batch is written in the store's transaction together with the
    watermark (exactly-once); otherwise the sink keeps its own connection (at-least-once).
    """

    def __init__(
        self,
        table: str,
        columns: Mapping[str, str],
        *,
        path: str | os.PathLike[str] | None = None,
        key: Sequence[str] = (),
        checkpoint_column: str | None = "checkpoint",
        **limits: Any,
    ) -> None:
        super().__init__(path, **limits)
        if not table.isidentifier():
            raise ConfigurationError(f"SqliteSink table name {table!r} is not an identifier")
        if not columns:
            raise ConfigurationError(f"SqliteSink {table!r}: columns must not be empty")
        unknown = [k for k in key if k not in columns]
        if unknown:
            raise ConfigurationError(f"SqliteSink {table!r}: key columns {unknown} not in columns")
        self.table = table
        self.columns = dict(columns)
        self.key = tuple(key)
        self.checkpoint_column = checkpoint_column if checkpoint_column in columns else None
        self._insert = f"INSERT INTO {table} ({', '.join(self.columns)})"
        self._on_conflict = ""
        if self.key:
            updates = ", ".join(f"{c} = excluded.{c}" for c in self.columns if c not in key)
            action = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
            self._on_conflict = f"ON CONFLICT ({', '.join(self.key)}) {action}"

    @property
    def label(self) -> str:
        return f"SqliteSink {self.table!r}"

    def _ddl(self) -> list[str]:
        cols = ", ".join(f"{name} {sql_type}" for name, sql_type in self.columns.items())
        statements = [f"CREATE TABLE IF NOT EXISTS {self.table} ({cols})"]
        if self.key:
            statements.append(
                f"CREATE UNIQUE INDEX IF NOT EXISTS {self.table}_key "
                f"ON {self.table} ({', '.join(self.key)})"
            )
        if self.prunes:
            statements.append(
                f"CREATE INDEX IF NOT EXISTS {self.table}_cp ON {self.table} "
                f"({self.checkpoint_column})"
            )
        return statements

    def _rows(self, batch: Iterable[Sequence[Row]]) -> list[Sequence[Any]]:
        """Flatten messages into positional rows (the type is checked once per message)."""
        names = list(self.columns)
        rows: list[Sequence[Any]] = []
        for message in batch:
            if not message:
                continue
            if type(message[0]) is tuple:  # the usual case, without an ABC check
                rows.extend(cast(Sequence[Sequence[Any]], message))
            elif isinstance(message[0], Mapping):
                mappings = cast(Sequence[Mapping[str, Any]], message)
                rows.extend([row[name] for name in names] for row in mappings)
            else:
                rows.extend(cast(Sequence[Sequence[Any]], message))
        return rows

    async def write(self, connection: aiosqlite.Connection, batch: list[Sequence[Row]]) -> None:
        # The DDL runs in every batch's transaction: remembering that the table exists would be
        # wrong after a rolled-back first batch, and IF NOT EXISTS costs one lookup per batch.
        # All of it in one hop to aiosqlite's thread (each hop is a round trip between threads),
        # the rows in statements of thousands (insert_rows), which run without the GIL.
        ddl, insert, on_conflict = self._ddl(), self._insert, self._on_conflict
        width = len(self.columns)

        def write(db: sqlite3.Connection) -> None:
            for statement in ddl:
                db.execute(statement)
            insert_rows(db, insert, width, self._rows(batch), on_conflict)

        await on_thread(connection, write)

    async def delete_from(self, connection: aiosqlite.Connection, checkpoint: int) -> int:
        """Delete the rows of checkpoints ``checkpoint`` and later (none if no table yet)."""
        if self.checkpoint_column is None:
            return await super().delete_from(connection, checkpoint)
        delete = f"DELETE FROM {self.table} WHERE {self.checkpoint_column} >= ?"

        def run(db: sqlite3.Connection) -> int:
            if not _exists(db, self.table):
                return 0
            return db.execute(delete, (checkpoint,)).rowcount

        return await on_thread(connection, run)

    async def delete_below(
        self, connection: aiosqlite.Connection, checkpoint: int, limit: int
    ) -> int:
        """Delete at most ``limit`` rows of checkpoints below ``checkpoint`` (none if no
        table yet), in one hop."""
        if self.checkpoint_column is None:
            return await super().delete_below(connection, checkpoint, limit)
        delete = (
            f"DELETE FROM {self.table} WHERE rowid IN (SELECT rowid FROM {self.table} "
            f"WHERE {self.checkpoint_column} < ? LIMIT ?)"
        )

        def run(db: sqlite3.Connection) -> int:
            if not _exists(db, self.table):
                return 0
            return db.execute(delete, (checkpoint, limit)).rowcount

        return await on_thread(connection, run)


def _exists(db: sqlite3.Connection, table: str) -> bool:
    """Whether ``table`` exists (a sink's first batch creates it)."""
    sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    return db.execute(sql, (table,)).fetchone() is not None

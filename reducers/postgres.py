"""PostgresSink: rows into a PostgreSQL table (COPY), exactly once when it shares the store's
database."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from indexer import ConfigurationError
from indexer.sinks import PostgresDatabaseSink, create_missing, quote_ident

__all__ = ["PostgresSink"]

Row = Sequence[Any] | Mapping[str, Any]


class PostgresSink(PostgresDatabaseSink[Sequence[Row]]):
    """Writes the rows of each message (a list of rows) into ``schema.table``.

    ``columns`` maps column names to SQL types; the table is created when missing. Rows are
    tuples (NamedTuples included) in column order or mappings by column name. Plain inserts use
    COPY; with ``key`` rows are upserted (the last row of a key in a batch wins), so replays
    are idempotent. When ``dsn`` is None or names the ``PostgresProgressStore``'s database,
    each batch is written in the store's transaction with the watermark (exactly-once);
    otherwise the sink uses its own pool, one transaction per batch (at-least-once).
    ``checkpoint_column`` (when ``columns`` has it) holds each row's checkpoint, so that
    ``indexer reset --delete-rows`` can delete what a re-index writes again, and a pipeline's
    ``retention`` prune the rows of old checkpoints (in chunks of ``prune_chunk_size`` rows,
    the column then indexed).
    """

    def __init__(
        self,
        table: str,
        columns: Mapping[str, str],
        *,
        dsn: str | None = None,
        schema: str = "public",
        key: Sequence[str] = (),
        checkpoint_column: str | None = "checkpoint",
        **limits: Any,
    ) -> None:
        super().__init__(dsn, **limits)
        q_table = quote_ident(table, "PostgresSink table name")
        q_schema = quote_ident(schema, f"PostgresSink {table!r} schema")
        if not columns:
            raise ConfigurationError(f"PostgresSink {table!r}: columns must not be empty")
        for name in columns:
            quote_ident(name, f"PostgresSink {table!r} column")
        unknown = [k for k in key if k not in columns]
        if unknown:
            raise ConfigurationError(
                f"PostgresSink {table!r}: key columns {unknown} not in columns"
            )
        if len(table) > 59:
            raise ConfigurationError(f"PostgresSink table name {table!r} is too long")
        self.table = table
        self.schema = schema
        self.columns = dict(columns)
        self.key = tuple(key)
        self.checkpoint_column = checkpoint_column if checkpoint_column in columns else None
        self._names = list(self.columns)
        self._names_tuple = tuple(self._names)
        self._positional: set[type] = {tuple, list}  # row types already in column order
        self._ready = False  # the table (and key index) is known to exist, committed
        self._qualified = f"{q_schema}.{q_table}"
        self._index = f"{table}_key"
        cols = ", ".join(f'"{c}"' for c in self._names)
        self._stage = f'"_indexer_stage_{table}"'
        self._upsert = ""
        if self.key:
            keys = ", ".join(f'"{c}"' for c in self.key)
            updates = ", ".join(f'"{c}" = excluded."{c}"' for c in self._names if c not in key)
            action = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
            # DISTINCT ON keeps one row per key: the last copied (a fresh heap is in copy order).
            self._upsert = (
                f"INSERT INTO {self._qualified} ({cols}) SELECT DISTINCT ON ({keys}) {cols} "
                f"FROM {self._stage} ORDER BY {keys}, ctid DESC ON CONFLICT ({keys}) {action}"
            )

    @property
    def label(self) -> str:
        return f"PostgresSink {self.table!r}"

    async def write(self, conn: asyncpg.Connection, batch: list[Sequence[Row]]) -> None:
        """Create the table if needed, then COPY (or stage and upsert) the batch's rows."""
        if not self._ready:
            await self._create_table(conn)
        records = self._records(batch)
        if not records:
            return
        if not self.key:
            await conn.copy_records_to_table(
                self.table, records=records, columns=self._names, schema_name=self.schema
            )
            return
        await conn.execute(
            f"CREATE TEMPORARY TABLE {self._stage} "
            f"(LIKE {self._qualified} INCLUDING DEFAULTS) ON COMMIT DROP"
        )
        await conn.copy_records_to_table(
            f"_indexer_stage_{self.table}", records=records, columns=self._names
        )
        await conn.execute(self._upsert)

    async def delete_from(self, conn: asyncpg.Connection, checkpoint: int) -> int:
        """Delete the rows of checkpoints ``checkpoint`` and later (none if no table yet)."""
        if self.checkpoint_column is None:
            return await super().delete_from(conn, checkpoint)
        if await conn.fetchval("SELECT to_regclass($1)", self._qualified) is None:
            return 0
        status = await conn.execute(
            f'DELETE FROM {self._qualified} WHERE "{self.checkpoint_column}" >= $1', checkpoint
        )
        return int(status.split()[-1])  # "DELETE 42"

    async def delete_below(self, conn: asyncpg.Connection, checkpoint: int, limit: int) -> int:
        """Delete at most ``limit`` rows of checkpoints below ``checkpoint`` (none if no
        table yet)."""
        if self.checkpoint_column is None:
            return await super().delete_below(conn, checkpoint, limit)
        if await conn.fetchval("SELECT to_regclass($1)", self._qualified) is None:
            return 0
        rows = f'SELECT ctid FROM {self._qualified} WHERE "{self.checkpoint_column}" < $1 LIMIT $2'
        status = await conn.execute(
            f"DELETE FROM {self._qualified} WHERE ctid = ANY(ARRAY({rows}))", checkpoint, limit
        )
        return int(status.split()[-1])

    async def _create_table(self, conn: asyncpg.Connection) -> None:
        """Create the schema, table and key index when missing (checked first, so a role
        without CREATE can write to existing tables)."""
        cols = ", ".join(f'"{name}" {sql_type}' for name, sql_type in self.columns.items())
        indexes = {}
        if self.key:
            keys = ", ".join(f'"{c}"' for c in self.key)
            indexes[f"{quote_ident(self.schema)}.{quote_ident(self._index)}"] = (
                f"CREATE UNIQUE INDEX IF NOT EXISTS {quote_ident(self._index)} "
                f"ON {self._qualified} ({keys})"
            )
        if self.prunes:  # retention deletes by checkpoint, a chunk at a time
            index = f"{self.table}_cp"
            indexes[f"{quote_ident(self.schema)}.{quote_ident(index)}"] = (
                f"CREATE INDEX IF NOT EXISTS {quote_ident(index)} "
                f'ON {self._qualified} ("{self.checkpoint_column}")'
            )
        if await create_missing(conn, self.schema, {self._qualified: cols}, indexes):
            self._ready = True  # seen before this transaction wrote anything: committed

    def _records(self, batch: list[Sequence[Row]]) -> list[Any]:
        """The batch's rows as sequences in column order; tuples pass through untouched."""
        positional = self._positional.__contains__
        records: list[Any] = []
        for message in batch:
            if all(map(positional, map(type, message))):  # no per-row Python-level work
                records.extend(message)
                continue
            for row in message:
                records.append(row if positional(type(row)) else self._convert(row))
        return records

    def _convert(self, row: Any) -> Sequence[Any]:
        if isinstance(row, Mapping):
            return [row[name] for name in self._names]
        fields = getattr(row, "_fields", None)  # a NamedTuple
        if fields is not None and tuple(fields) != self._names_tuple:
            return [getattr(row, name) for name in self._names]
        if isinstance(row, Sequence) and not isinstance(row, str | bytes):
            self._positional.add(type(row))  # in column order: pass it through from now on
            return row
        raise TypeError(f"PostgresSink {self.table!r}: cannot write a row of type {type(row)}")

"""PostgresSink: rows into a PostgreSQL table (COPY), exactly once when it shares the store's
database."""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import asyncpg

from indexer import ConfigurationError, Reducer
from indexer._postgres import CONNECT_TIMEOUT, DDL_LOCK, quote_ident
from indexer.progress import PostgresProgressStore

__all__ = ["PostgresSink", "same_database"]

Row = Sequence[Any] | Mapping[str, Any]
_LOOPBACK = {"localhost", "127.0.0.1", "::1", ""}


class PostgresSink(Reducer[Sequence[Row]]):
    """Writes the rows of each message (a list of rows) into ``schema.table``.

    ``columns`` maps column names to SQL types; the table is created when missing. Rows are
    tuples (NamedTuples included) in column order or mappings by column name. Plain inserts use
    COPY; with ``key`` rows are upserted (the last row of a key in a batch wins), so replays
    are idempotent. When ``dsn`` is None or names the ``PostgresProgressStore``'s database,
    each batch is written in the store's transaction with the watermark (exactly-once);
    otherwise the sink uses its own pool, one transaction per batch (at-least-once).
    """

    def __init__(
        self,
        table: str,
        columns: Mapping[str, str],
        *,
        dsn: str | None = None,
        schema: str = "public",
        key: Sequence[str] = (),
        **limits: Any,
    ) -> None:
        super().__init__(**limits)
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
        self.dsn = dsn
        self.key = tuple(key)
        self._names = list(self.columns)
        self._names_tuple = tuple(self._names)
        self._positional: set[type] = {tuple, list}  # row types already in column order
        self._pool: asyncpg.Pool | None = None
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

    def check_store(self, store: Any) -> None:
        if self.dsn is None and not self.uses_store_transaction(store):
            raise ConfigurationError(
                f"PostgresSink {self.table!r}: no dsn is set and the progress store "
                f"({type(store).__name__}) is not PostgreSQL; set dsn or use a PostgreSQL store"
            )

    def uses_store_transaction(self, store: Any) -> bool:
        if not isinstance(store, PostgresProgressStore):
            return False
        return self.dsn is None or same_database(self.dsn, store.dsn)

    async def commit_in_transaction(self, connection: Any, batch: list[Sequence[Row]]) -> None:
        await self._write(connection, batch)

    async def commit(self, batch: list[Sequence[Row]]) -> None:
        if self.dsn is None:
            raise ConfigurationError(
                f"PostgresSink {self.table!r} has no dsn and the progress store is not PostgreSQL"
            )
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self.dsn, min_size=1, max_size=2, timeout=CONNECT_TIMEOUT
            )
        async with self._pool.acquire() as conn, conn.transaction():
            await self._write(conn, batch)

    async def close(self) -> None:
        """Close the sink's own pool, if it opened one."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def _write(self, conn: asyncpg.Connection, batch: list[Sequence[Row]]) -> None:
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

    async def _create_table(self, conn: asyncpg.Connection) -> None:
        """Create the schema, table and key index when missing (checked first, so a role
        without CREATE can write to existing tables)."""
        index = f"{quote_ident(self.schema)}.{quote_ident(self._index)}" if self.key else None
        exists = (
            "SELECT to_regclass($1) IS NOT NULL"
            " AND ($2::text IS NULL OR to_regclass($2) IS NOT NULL)"
        )
        if await conn.fetchval(exists, self._qualified, index):
            self._ready = True  # seen before this transaction wrote anything: committed
            return
        await conn.execute(DDL_LOCK)
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(self.schema)}")
        cols = ", ".join(f'"{name}" {sql_type}' for name, sql_type in self.columns.items())
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {self._qualified} ({cols})")
        if self.key:
            keys = ", ".join(f'"{c}"' for c in self.key)
            await conn.execute(
                f"CREATE UNIQUE INDEX IF NOT EXISTS {quote_ident(self._index)} "
                f"ON {self._qualified} ({keys})"
            )

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


def same_database(a: str, b: str) -> bool:
    """True when two DSNs name the same host(s), port(s), database and user."""
    return _target(a) == _target(b)


def _target(dsn: str) -> tuple[tuple[tuple[str, int], ...], str, str]:
    """(hosts with ports, database, user) of a ``postgresql://`` DSN, with libpq's defaults."""
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    user = query.get("user") or unquote(userinfo.partition(":")[0])
    user = user or os.environ.get("PGUSER") or getpass.getuser()
    database = query.get("dbname") or query.get("database") or unquote(parts.path.lstrip("/"))
    database = database or os.environ.get("PGDATABASE") or user
    default_port = int(query.get("port") or os.environ.get("PGPORT") or 5432)
    hosts: list[tuple[str, int]] = []
    specs = query["host"].split(",") if "host" in query else hostlist.split(",")
    for spec in specs:
        host, port = spec, ""
        if spec.startswith("["):  # [IPv6]:port
            host, _, port = spec[1:].partition("]")
            port = port.lstrip(":")
        elif spec.count(":") == 1:
            host, _, port = spec.partition(":")
        host = unquote(host).lower()
        host = "localhost" if host in _LOOPBACK else host
        hosts.append((host, int(port) if port else default_port))
    return tuple(sorted(hosts)), database, user

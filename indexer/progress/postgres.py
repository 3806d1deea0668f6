"""A PostgreSQL progress store (asyncpg) that sinks in the same database may share."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg

from .._dsn import mask_dsn
from .._log import log
from ..errors import ConfigurationError, ProgressStoreError
from ._base import DeadLetter, TransactionalProgressStore

__all__ = [
    "CONNECTION_ERRORS",
    "PostgresProgressStore",
    "close_pool",
    "create_missing",
    "open_pool",
    "quote_ident",
]

T = TypeVar("T")


#: Errors that mean the connection (or the server) went away; worth retrying.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, DNS, and TimeoutError (a connect timeout)
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,  # pg_terminate_backend, a server shutdown
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,  # the server is starting up
    asyncpg.exceptions.TooManyConnectionsError,
)
#: InterfaceErrors that are not about the connection: bad arguments, configuration.
_NOT_RETRIED: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.ClientConfigurationError,
    asyncpg.exceptions.UnsupportedClientFeatureError,
    asyncpg.exceptions.UnsupportedServerFeatureError,
)
CONNECT_TIMEOUT = 5.0
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_DDL_LOCK = "SELECT pg_advisory_xact_lock(hashtext('indexer ddl'))"


def quote_ident(name: str, what: str = "identifier") -> str:
    """``name`` double-quoted, after checking it is a plain SQL identifier (ConfigurationError)."""
    if not _IDENTIFIER.fullmatch(name):
        raise ConfigurationError(f"{what} {name!r} is not a valid SQL identifier")
    return f'"{name}"'


class PostgresProgressStore(TransactionalProgressStore):
    """Watermarks and dead letters in PostgreSQL, through an asyncpg pool.

    Tables are created in ``schema`` when missing. Lost connections during ``load``, ``save``
    and the other methods are retried forever with backoff (logged once per outage); inside
    ``transaction`` errors propagate. A sink in the same database (compare ``.dsn``) can write
    its rows and the watermark in one transaction. Methods open the store lazily.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "public",
        min_size: int = 1,
        max_size: int = 4,
        application_name: str | None = None,
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self.min_size = min_size
        self.max_size = max_size
        if application_name is None and "application_name=" not in dsn:
            application_name = "indexer"
        self.application_name = application_name
        s = quote_ident(schema, "progress store schema")
        self._watermarks = f"{s}.indexer_watermarks"
        self._dead_letters = f"{s}.indexer_dead_letters"
        w = self._watermarks
        self._raise = f"""
            INSERT INTO {w} AS t (pipeline, next_checkpoint) VALUES ($1, $2)
            ON CONFLICT (pipeline) DO UPDATE
            SET next_checkpoint = excluded.next_checkpoint, updated_at = now()
            WHERE excluded.next_checkpoint > t.next_checkpoint
            RETURNING t.next_checkpoint"""
        # One statement: the raised value, or (when nothing rose) the one already stored.
        self._save = f"""
            WITH raised AS ({self._raise})
            SELECT next_checkpoint FROM raised
            UNION ALL
            SELECT next_checkpoint FROM {w}
            WHERE pipeline = $1 AND NOT EXISTS (SELECT 1 FROM raised)"""
        self._reset = f"""
            INSERT INTO {w} (pipeline, next_checkpoint) VALUES ($1, $2)
            ON CONFLICT (pipeline) DO UPDATE
            SET next_checkpoint = excluded.next_checkpoint, updated_at = now()"""
        self._load = f"SELECT next_checkpoint FROM {w} WHERE pipeline = $1"
        self._pool: asyncpg.Pool | None = None
        self._open_lock = asyncio.Lock()
        self._owners: set[asyncio.Task[Any]] = set()  # tasks inside transaction()
        self._unreachable = False  # an outage has been logged and not yet recovered from

    def __repr__(self) -> str:
        return f"PostgresProgressStore({mask_dsn(self.dsn)!r}, schema={self.schema!r})"

    async def open(self) -> None:
        """Create the pool, the schema and the tables; idempotent. Fails fast when the database
        cannot be reached, with a one-line ProgressStoreError naming the masked DSN."""
        async with self._open_lock:
            if self._pool is not None:
                return
            self._pool = await open_pool(
                self.dsn,
                min_size=self.min_size,
                max_size=self.max_size,
                application_name=self.application_name,
                what="progress database",
                setup=self._create_tables,
            )
            await super().open()

    async def _create_tables(self, conn: asyncpg.Connection) -> None:
        watermarks = """pipeline TEXT PRIMARY KEY,
            next_checkpoint BIGINT NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL DEFAULT now()"""
        dead_letters = """pipeline TEXT,
            sequence_number BIGINT,
            error TEXT,
            recorded_at TIMESTAMPTZ DEFAULT now(),
            PRIMARY KEY (pipeline, sequence_number)"""
        tables = {self._watermarks: watermarks, self._dead_letters: dead_letters}
        await create_missing(conn, self.schema, tables)

    async def close(self) -> None:
        """Close the pool, after open transactions have ended; idempotent."""
        self._refuse_reentry()
        async with self._open_lock:
            if self._pool is not None:
                pool, self._pool = self._pool, None
                await close_pool(pool)
            await super().close()

    async def load(self, pipeline: str) -> int | None:
        """The pipeline's watermark, or None when it has never saved one."""
        value = await self._retrying("load", lambda c: c.fetchval(self._load, pipeline))
        return None if value is None else int(value)

    async def save(self, pipeline: str, watermark: int) -> int:
        """Raise the watermark with one rise-only upsert; returns the value now stored."""

        async def save(conn: asyncpg.Connection) -> Any:
            value = await conn.fetchval(self._save, pipeline, watermark)
            if value is None:  # a concurrent insert our snapshot could not see
                value = await conn.fetchval(self._load, pipeline)
            return value

        return int(await self._retrying("save", save))

    async def reset(self, pipeline: str, watermark: int) -> None:
        """Set the watermark to any value, lower included."""
        await self._retrying("reset", lambda c: c.execute(self._reset, pipeline, watermark))

    async def watermarks(self) -> dict[str, int]:
        """Every pipeline's watermark."""
        sql = f"SELECT pipeline, next_checkpoint FROM {self._watermarks}"
        rows = await self._retrying("load", lambda c: c.fetch(sql))
        return {row[0]: int(row[1]) for row in rows}

    async def add_dead_letter(self, pipeline: str, sequence_number: int, error: str) -> None:
        """Record a skipped checkpoint (replacing an earlier record of it)."""
        sql = f"""
            INSERT INTO {self._dead_letters} (pipeline, sequence_number, error) VALUES ($1, $2, $3)
            ON CONFLICT (pipeline, sequence_number) DO UPDATE
            SET error = excluded.error, recorded_at = now()"""
        await self._retrying(
            "save a dead letter", lambda c: c.execute(sql, pipeline, sequence_number, error)
        )

    async def dead_letters(self, pipeline: str | None = None) -> list[DeadLetter]:
        """Dead letters of one pipeline or all, sorted by sequence number then pipeline."""
        sql = (
            "SELECT pipeline, sequence_number, error, extract(epoch FROM recorded_at)::float8"
            f" FROM {self._dead_letters} WHERE $1::text IS NULL OR pipeline = $1"
            " ORDER BY sequence_number, pipeline"
        )
        rows = await self._retrying("load dead letters", lambda c: c.fetch(sql, pipeline))
        return [DeadLetter(p, int(s), e or "", float(r or 0.0)) for p, s, e, r in rows]

    @asynccontextmanager
    async def transaction(self, pipeline: str, watermark: int) -> AsyncIterator[asyncpg.Connection]:
        """Yield a connection inside a transaction; commit rows and watermark together.

        On a clean exit the watermark is raised (rise-only) in the same transaction and it
        commits; if the block raises, everything rolls back and the error propagates unchanged.
        Connection errors are not retried here: the caller retries the whole batch.
        """
        self._refuse_reentry()
        pool = await self._opened()
        task = asyncio.current_task()
        async with pool.acquire() as conn, conn.transaction():
            if task is not None:
                self._owners.add(task)
            try:
                yield conn
            finally:
                if task is not None:
                    self._owners.discard(task)
            await conn.execute(self._raise, pipeline, watermark)

    async def _opened(self) -> asyncpg.Pool:
        if self._pool is None:
            await self.open()
        assert self._pool is not None
        return self._pool

    def _refuse_reentry(self) -> None:
        """Fail fast instead of waiting for a pool slot the caller itself holds."""
        if asyncio.current_task() in self._owners:
            raise ProgressStoreError(
                f"{mask_dsn(self.dsn)}: progress store called inside its own transaction; "
                "use the connection the transaction yields"
            )

    async def _retrying(
        self, action: str, operation: Callable[[asyncpg.Connection], Awaitable[T]]
    ) -> T:
        """Run ``operation`` on a pooled connection, retrying lost connections with backoff
        (0.1 s doubling to 5 s) until it succeeds or the task is cancelled."""
        self._refuse_reentry()
        delay = 0.1
        while True:
            pool = await self._opened()
            try:
                async with pool.acquire() as conn:
                    result = await operation(conn)
            except _NOT_RETRIED as exc:
                raise ProgressStoreError(
                    f"{mask_dsn(self.dsn)}: cannot {action}: {reason(exc)}"
                ) from exc
            except CONNECTION_ERRORS as exc:
                if not self._unreachable:
                    self._unreachable = True
                    log.warning(
                        "progress store unreachable, retrying",
                        dsn=mask_dsn(self.dsn),
                        action=action,
                        error=reason(exc),
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            except asyncpg.PostgresError as exc:
                raise ProgressStoreError(
                    f"{mask_dsn(self.dsn)}: cannot {action}: {reason(exc)}"
                ) from exc
            if self._unreachable:
                self._unreachable = False
                log.info("progress store reachable again", dsn=mask_dsn(self.dsn), action=action)
            return result


async def skip_session_reset(conn: asyncpg.Connection) -> None:
    """The pools' reset when a connection is given back: nothing beyond what asyncpg always
    does (roll back a transaction left open). asyncpg's default also resets the session
    (``RESET ALL``, ``UNLISTEN *``, ...), a round trip per batch committed; the stores keep no
    session state on their connections (no ``SET``, ``LISTEN``, advisory locks or cursors),
    and reducers must not either."""


async def open_pool(
    dsn: str,
    *,
    min_size: int,
    max_size: int,
    application_name: str | None,
    what: str,
    setup: Callable[[asyncpg.Connection], Awaitable[None]],
) -> asyncpg.Pool:
    """A pool on ``dsn`` whose first connection has run ``setup`` (creating tables). Fails
    fast when the database cannot be reached: one-line ProgressStoreError naming the masked
    DSN and ``what`` was being opened."""
    settings = {"application_name": application_name} if application_name else {}
    pool: asyncpg.Pool | None = None
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=CONNECT_TIMEOUT,
            server_settings=settings,
            reset=skip_session_reset,
        )
        async with pool.acquire() as conn:
            await setup(conn)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
        if pool is not None:
            pool.terminate()
        raise ProgressStoreError(f"{mask_dsn(dsn)}: cannot open {what}: {reason(exc)}") from exc
    return pool


async def close_pool(pool: asyncpg.Pool) -> None:
    """Close ``pool``, dropping connections that are stuck or broken."""
    try:
        await asyncio.wait_for(pool.close(), timeout=30)
    except Exception:
        pool.terminate()


async def create_missing(conn: asyncpg.Connection, schema: str, tables: dict[str, str]) -> None:
    """Create ``schema`` and the ``tables`` (qualified name -> column list) that are missing,
    checking first, so that a role without CREATE can still use tables that exist. An
    advisory lock keeps concurrent creators from colliding."""
    names = list(tables)
    exists = " AND ".join(f"to_regclass(${n}) IS NOT NULL" for n in range(1, len(names) + 1))
    if await conn.fetchval(f"SELECT {exists}", *names):
        return
    async with conn.transaction():
        await conn.execute(_DDL_LOCK)
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
        for name, columns in tables.items():
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {name} ({columns})")


def reason(exc: BaseException) -> str:
    """An exception as one short line."""
    if isinstance(exc, TimeoutError):
        return f"timed out after {CONNECT_TIMEOUT:g} s"
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
        if exc.errno and exc.errno > 0 and os.strerror(exc.errno) not in text:
            text = f"{os.strerror(exc.errno)}: {text}"  # "Connection refused: Connect call ..."
    elif isinstance(exc, ValueError) and not isinstance(exc, asyncpg.PostgresError):
        text = f"invalid DSN: {exc}"
    else:
        text = str(exc)
    return " ".join(text.split()) or type(exc).__name__

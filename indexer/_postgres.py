"""PostgreSQL plumbing shared by the stores and sinks (asyncpg): pools, DDL, one-line errors.

``SharedPool`` is to the PostgreSQL progress and claim stores what ``_sqlite.SharedConnection``
is to the SQLite ones: the pool they open lazily, the error every failure becomes (one line,
the DSN's password masked), and a fail-fast error instead of a deadlock when a task calls its
store from inside the store's own transaction. Nothing here retries: the pipeline's committer
is the one layer that retries a commit or a save.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg

from ._dsn import mask_dsn
from .errors import ConfigurationError, ProgressStoreError

__all__ = [
    "CONNECT_TIMEOUT",
    "ERRORS",
    "SharedPool",
    "close_pool",
    "create_missing",
    "quote_ident",
    "reason",
    "skip_session_reset",
]

T = TypeVar("T")

CONNECT_TIMEOUT = 5.0
#: What a failing statement, connection or server raises.
ERRORS: tuple[type[BaseException], ...] = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
#: Taken by every creator of tables, so that concurrent creators do not collide.
_DDL_LOCK = "SELECT pg_advisory_xact_lock(hashtext('indexer ddl'))"


def quote_ident(name: str, what: str = "identifier") -> str:
    """``name`` double-quoted, after checking it is a plain SQL identifier (ConfigurationError)."""
    if not _IDENTIFIER.fullmatch(name):
        raise ConfigurationError(f"{what} {name!r} is not a valid SQL identifier")
    return f'"{name}"'


def reason(exc: BaseException) -> str:
    """An exception as one short line."""
    if isinstance(exc, TimeoutError):
        return f"timed out after {CONNECT_TIMEOUT:g} s"
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
        if exc.errno and exc.errno > 0 and os.strerror(exc.errno) not in text:
            text = f"{os.strerror(exc.errno)}: {text}"  # "Connection refused: Connect call ..."
    elif isinstance(exc, ValueError) and not isinstance(exc, asyncpg.PostgresError):
        text = str(exc) if str(exc).startswith("invalid DSN") else f"invalid DSN: {exc}"
    else:
        text = str(exc)
    return " ".join(text.split()) or type(exc).__name__


async def skip_session_reset(conn: asyncpg.Connection) -> None:
    """The pools' reset when a connection is given back: nothing beyond what asyncpg always
    does (roll back a transaction left open). asyncpg's default also resets the session
    (``RESET ALL``, ``UNLISTEN *``, ...), a round trip per batch committed; the stores keep no
    session state on their connections (no ``SET``, ``LISTEN``, advisory locks or cursors),
    and reducers must not either."""


async def close_pool(pool: asyncpg.Pool) -> None:
    """Close ``pool``, dropping connections that are stuck or broken."""
    try:
        await asyncio.wait_for(pool.close(), timeout=30)
    except Exception:
        pool.terminate()


async def create_missing(
    conn: asyncpg.Connection,
    schema: str,
    tables: dict[str, str],
    indexes: dict[str, str] | None = None,
) -> bool:
    """Create ``schema``, the ``tables`` (qualified name -> column list) and the ``indexes``
    (qualified name -> CREATE INDEX statement) that are missing; True when all existed.

    Existence is checked first, so that a role without CREATE can still use what exists. An
    advisory lock keeps concurrent creators from colliding. Inside a transaction this runs in
    a savepoint of it (and goes when it rolls back)."""
    indexes = indexes or {}
    names = [*tables, *indexes]
    exists = " AND ".join(f"to_regclass(${n}) IS NOT NULL" for n in range(1, len(names) + 1))
    if await conn.fetchval(f"SELECT {exists}", *names):
        return True
    async with conn.transaction():
        await conn.execute(_DDL_LOCK)
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
        for name, columns in tables.items():
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {name} ({columns})")
        for statement in indexes.values():
            await conn.execute(statement)
    return False


class SharedPool:
    """The asyncpg pool of one store; see the module docstring.

    ``what`` names the database in errors ("progress database"), ``reentry`` is the error a
    re-entering call raises, ``setup`` runs on the first connection (creating tables),
    ``opener`` is what a lazy open calls (the store's own ``open``, so that the store knows it
    is open), ``open`` by default. ``application_name`` defaults to "indexer" unless the DSN
    sets one.
    """

    def __init__(
        self,
        dsn: str,
        *,
        what: str,
        reentry: str,
        setup: Callable[[asyncpg.Connection], Awaitable[None]],
        min_size: int = 1,
        max_size: int = 4,
        application_name: str | None = None,
        opener: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        if application_name is None and "application_name=" not in dsn:
            application_name = "indexer"
        self.dsn = dsn
        self.what = what
        self.reentry = reentry
        self.min_size = min_size
        self.max_size = max_size
        self.application_name = application_name
        self._setup = setup
        self._opener = opener or self.open
        self._pool: asyncpg.Pool | None = None
        self._open_lock = asyncio.Lock()
        self._owners: set[asyncio.Task[Any]] = set()  # tasks inside transaction()

    async def open(self) -> None:
        """Create the pool and run ``setup`` on its first connection; idempotent. Fails fast
        when the database cannot be reached, with a one-line ProgressStoreError."""
        async with self._open_lock:
            if self._pool is not None:
                return
            settings = {"application_name": self.application_name}
            pool: asyncpg.Pool | None = None
            try:
                pool = await asyncpg.create_pool(
                    self.dsn,
                    min_size=self.min_size,
                    max_size=self.max_size,
                    timeout=CONNECT_TIMEOUT,
                    server_settings=settings if self.application_name else {},
                    reset=skip_session_reset,
                )
                async with pool.acquire() as conn:
                    await self._setup(conn)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
                if pool is not None:
                    pool.terminate()
                raise self.error(f"open {self.what}", exc) from exc
            self._pool = pool

    async def close(self) -> None:
        """Close the pool, after open transactions have ended; idempotent."""
        self.refuse_reentry()
        async with self._open_lock:
            if self._pool is not None:
                pool, self._pool = self._pool, None
                await close_pool(pool)

    def error(self, action: str, exc: BaseException) -> ProgressStoreError:
        """``exc`` as a one-line error naming the masked DSN and the ``action``."""
        return ProgressStoreError(f"{mask_dsn(self.dsn)}: cannot {action}: {reason(exc)}")

    def refuse_reentry(self) -> None:
        """Fail fast instead of waiting for a pool slot, or a row lock, the caller holds."""
        if asyncio.current_task() in self._owners:
            raise ProgressStoreError(f"{mask_dsn(self.dsn)}: {self.reentry}")

    async def run(self, action: str, operation: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """``operation`` on a pooled connection, opening the pool first if needed; database
        errors become one-line ProgressStoreErrors (others, such as ClaimLost, pass through)."""
        self.refuse_reentry()
        pool = await self._opened()
        try:
            async with pool.acquire() as conn:
                return await operation(conn)
        except ERRORS as exc:
            raise self.error(action, exc) from exc

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection inside a transaction: it commits when the block ends cleanly
        and rolls back when it raises. Errors propagate unchanged; the caller retries."""
        self.refuse_reentry()
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

    async def _opened(self) -> asyncpg.Pool:
        if self._pool is None:
            await self._opener()
        assert self._pool is not None
        return self._pool

"""SQLite plumbing shared by the stores and sinks: connect in WAL mode, run, roll back."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from .errors import ProgressStoreError, StoreBusy
from .retry import RetryPolicy, retry

__all__ = [
    "SharedConnection",
    "connect",
    "execute_all",
    "fetch",
    "on_thread",
    "reason",
    "rollback",
]

T = TypeVar("T")
#: One SQL statement and its parameters.
Statement = tuple[str, Sequence[Any]]


async def connect(path: Path, *, busy_timeout: float = 30.0) -> aiosqlite.Connection:
    """Connect in autocommit mode (callers issue BEGIN themselves), in WAL mode, fsyncing on
    commit, waiting up to ``busy_timeout`` seconds for another connection's lock.

    Switching to WAL takes an exclusive lock and SQLite answers "database is locked" at once,
    without its busy handler, when another connection holds any lock meanwhile (several
    processes opening a fresh file together): that switch is retried until the timeout.
    When sqlite3 cannot open the file, aiosqlite stops its worker thread without waiting for
    it; the thread would then report to an event loop that may be closed. It is joined here.
    """
    pending = aiosqlite.connect(path, isolation_level=None, timeout=busy_timeout)
    try:
        conn = await pending
    except BaseException:
        worker = getattr(pending, "_thread", None)
        if isinstance(worker, threading.Thread) and worker.is_alive():
            worker.join(timeout=5)  # it only has its stop sentinel left to run
        raise
    try:
        await retry(
            lambda: fetch(conn, "PRAGMA journal_mode=WAL"),
            _wal_switch_retry(busy_timeout),
            retry_on=lambda exc: isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc),
        )
        await fetch(conn, "PRAGMA synchronous=FULL")
    except BaseException:
        await conn.close()
        raise
    return conn


def _wal_switch_retry(busy_timeout: float) -> RetryPolicy:
    """Waits of 1 ms doubling to 50 ms, for about ``busy_timeout`` seconds in all."""
    return RetryPolicy(
        initial=0.001, max_delay=0.05, jitter=0, max_attempts=int(busy_timeout / 0.05) + 7
    )


async def fetch(conn: aiosqlite.Connection, sql: str, params: Iterable[Any] = ()) -> list[Any]:
    """Execute one statement and fetch its rows (closing the cursor)."""
    return list(await conn.execute_fetchall(sql, params))


async def on_thread(conn: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """``fn(the sqlite3 connection)`` on the thread aiosqlite keeps for ``conn``, in one hop.

    Every aiosqlite call is a round trip to that thread; a batch write that runs several
    statements saves one per statement this way. aiosqlite has no public call
    for it: ``_execute`` is how its own methods queue work on the thread.
    """
    return await conn._execute(fn, conn._conn)


async def execute_all(conn: aiosqlite.Connection, statements: Sequence[Statement]) -> list[Any]:
    """Execute ``statements`` in order in one hop; returns the rows of the last one."""

    def run(db: sqlite3.Connection) -> list[Any]:
        rows: list[Any] = []
        for sql, params in statements:
            cursor = db.execute(sql, params)
            try:
                rows = cursor.fetchall()
            finally:
                cursor.close()
        return rows

    return await on_thread(conn, run)


async def rollback(conn: aiosqlite.Connection) -> None:
    """Roll back whatever is open; shielded so that a cancelled transaction still ends.

    Statements run in order on aiosqlite's thread, so this also undoes a BEGIN that was still
    queued when the caller was cancelled. A rollback outside a transaction does nothing.
    """
    with contextlib.suppress(sqlite3.Error, ValueError):  # ValueError: connection closed
        await asyncio.shield(conn.rollback())


def reason(exc: BaseException) -> str:
    """An error's message on one line (the OS's words for an OSError)."""
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return " ".join(text.split()) or type(exc).__name__


class SharedConnection:
    """The one connection a store's users share: opened lazily (directory, WAL, ``schema``),
    an asyncio lock keeping its users from interleaving, and a fail-fast error instead of a
    deadlock when a task calls the store from inside its own transaction.

    ``what`` names the database in errors ("progress database"); ``reentry`` is the error a
    re-entering call raises; ``opener`` is what a lazy open calls (the store's own ``open``,
    so that the store knows it is open), ``open`` by default; ``setup`` runs on the new
    connection after the ``schema`` statements (to bring an older file's tables up to date).
    """

    def __init__(
        self,
        path: Path,
        *,
        what: str,
        reentry: str,
        schema: Iterable[str],
        busy_timeout: float = 30.0,
        opener: Callable[[], Awaitable[None]] | None = None,
        setup: Callable[[aiosqlite.Connection], Awaitable[None]] | None = None,
    ) -> None:
        self.path = path
        self._setup = setup
        self._opener = opener or self.open
        self.what = what
        self.reentry = reentry
        self.schema = list(schema)
        self.busy_timeout = busy_timeout
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()  # serialises all use of the one connection
        self._open_lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None  # the task holding ``_lock``

    async def open(self) -> None:
        """Connect, create the parent directory and the schema; idempotent."""
        async with self._open_lock:
            if self._conn is not None:
                return
            conn: aiosqlite.Connection | None = None
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = await connect(self.path, busy_timeout=self.busy_timeout)
                for statement in self.schema:
                    await fetch(conn, statement)
                if self._setup is not None:
                    await self._setup(conn)
            except (OSError, sqlite3.Error) as exc:
                if conn is not None:
                    await conn.close()
                raise ProgressStoreError(
                    f"{self.path}: cannot open {self.what}: {reason(exc)}"
                ) from exc
            self._conn = conn

    async def close(self) -> None:
        """Close the connection, after any open transaction has ended; idempotent."""
        self.refuse_reentry()
        async with self._lock:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                await conn.close()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[aiosqlite.Connection]:
        """Hold the connection, opening it first if needed."""
        self.refuse_reentry()
        async with self._lock:
            if self._conn is None:
                await self._opener()
            assert self._conn is not None
            self._owner = asyncio.current_task()
            try:
                yield self._conn
            finally:
                self._owner = None

    @asynccontextmanager
    async def immediate(self, action: str) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``, the file's write lock) on the held
        connection: commits on a clean exit, rolls back if the block raises."""
        async with self.exclusive() as conn:
            try:
                await self.checked(conn, action, "BEGIN IMMEDIATE")
                yield conn
                await self.checked(conn, action, "COMMIT")
            except BaseException:
                await rollback(conn)
                raise

    def refuse_reentry(self) -> None:
        """Fail fast when the task holding the connection calls the store again."""
        if self._owner is not None and self._owner is asyncio.current_task():
            raise ProgressStoreError(f"{self.path}: {self.reentry}")

    async def run(self, action: str, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        """One statement on the held connection ``exclusive`` yielded (see ``checked``)."""
        return await self.run_all(action, [(sql, tuple(params))])

    async def run_all(self, action: str, statements: Sequence[Statement]) -> list[Any]:
        """``run`` for several statements in one hop; the last one's rows."""
        async with self.exclusive() as conn:
            return await self.checked_all(conn, action, statements)

    async def checked(
        self, conn: aiosqlite.Connection, action: str, sql: str, params: Iterable[Any] = ()
    ) -> list[Any]:
        """Run one statement, turning SQLite errors into a one-line ProgressStoreError that
        names the file and the ``action``."""
        return await self.checked_all(conn, action, [(sql, tuple(params))])

    async def checked_all(
        self, conn: aiosqlite.Connection, action: str, statements: Sequence[Statement]
    ) -> list[Any]:
        """``checked`` for several statements run in one hop; the last one's rows."""
        try:
            return await execute_all(conn, statements)
        except sqlite3.Error as exc:
            busy = isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)
            error = StoreBusy if busy else ProgressStoreError
            raise error(f"{self.path}: cannot {action}: {reason(exc)}") from exc

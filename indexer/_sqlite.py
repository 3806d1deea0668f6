"""SQLite plumbing shared by the stores and sinks: connect in WAL mode, run, roll back."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from functools import lru_cache
from itertools import chain
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from .errors import ProgressStoreError, StoreBusy
from .retry import RetryPolicy, retry

__all__ = [
    "SharedConnection",
    "begin_immediate",
    "connect",
    "execute_all",
    "fetch",
    "insert_rows",
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


#: The most rows ``insert_rows`` puts in one statement. SQLite keeps a compiled statement of
#: 4,000 five-column rows in about 2.3 MB, and sqlite3 caches 128 statements: the shapes of
#: up to 1,024 rows held 0.8 MB more than those of up to 256 (peak RSS of a run into SQLite).
MAX_ROWS_PER_STATEMENT = 256


def insert_rows(
    db: sqlite3.Connection,
    insert: str,
    width: int,
    rows: Sequence[Sequence[Any]],
    on_conflict: str = "",
) -> None:
    """Run ``{insert} VALUES (?, ...), (?, ...) {on_conflict}`` for ``rows`` of ``width``
    values each: what ``executemany`` does, in statements of many rows.

    ``executemany`` releases and retakes the GIL around every row, and a thread inserting
    that way beside a busy event loop waits for the loop at each row (4,000 rows took 490 ms
    instead of 6). A statement of many rows binds them in C and runs without the GIL (3.8 ms
    alone, 17 ms beside a busy thread). Statements hold a power of two of rows, up to
    ``MAX_ROWS_PER_STATEMENT`` and SQLite's parameter limit, so that only a few shapes are ever
    compiled and cached (a statement per batch length cached 2.3 MB each, up to 128 of them).
    Rows are checked to hold ``width`` values first: one short row would shift every value
    after it.
    """
    if not rows:
        return
    if width < 1:
        raise ValueError(f"width must be at least 1, got {width}")
    if set(map(len, rows)) != {width}:
        index, bad = next((i, r) for i, r in enumerate(rows) if len(r) != width)
        raise sqlite3.ProgrammingError(
            f"row {index} of the batch has {len(bad)} values, {width} expected: {bad!r}"
        )
    fits = min(MAX_ROWS_PER_STATEMENT, db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width)
    most = 1 << max(0, fits.bit_length() - 1)  # the largest power of two that fits
    start, total = 0, len(rows)
    while start < total:
        size = min(most, 1 << ((total - start).bit_length() - 1))
        params = list(chain.from_iterable(rows[start : start + size]))
        db.execute(_values_statement(insert, width, size, on_conflict), params)
        start += size


@lru_cache(maxsize=64)
def _values_statement(insert: str, width: int, rows: int, on_conflict: str) -> str:
    row = "(" + ", ".join("?" * width) + ")"
    return f"{insert} VALUES {', '.join([row] * rows)} {on_conflict}"


#: Seconds between two tries for a busy file's write lock (``begin_immediate``), jittered.
_LOCK_POLL = (0.0002, 0.001)


def _is_busy(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "busy" in str(exc)
    )


def begin_immediate(db: sqlite3.Connection, timeout: float) -> None:
    """``BEGIN IMMEDIATE``: take the file's write lock, waiting up to ``timeout`` seconds for
    another connection to release it, trying again every 0.2-1 ms.

    SQLite's own busy handler waits 1, 2, 5, 10, ... then 100 ms between its tries: beside a
    writer that commits every few milliseconds (another process of the same job), those
    sleeps keep missing the moments the lock is free, and the second writer starves (chunks
    of ``--processes 2`` waited 0.3 s to be marked done). Run on the connection's thread
    (``on_thread``); a timeout raises SQLite's "database is locked". ``timeout`` is the
    connection's own busy timeout, which it has again afterwards.
    """
    db.execute("PRAGMA busy_timeout = 0")
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(random.uniform(*_LOCK_POLL))
    finally:
        db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")


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
            except BaseException as exc:
                # Cancelled too (a run stopped while it opened): a connection left open is a
                # thread left running.
                if conn is not None:
                    await asyncio.shield(conn.close())
                if isinstance(exc, OSError | sqlite3.Error):
                    raise ProgressStoreError(
                        f"{self.path}: cannot open {self.what}: {reason(exc)}"
                    ) from exc
                raise
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
                await self.begin(conn, action)
                yield conn
                await self.checked(conn, action, "COMMIT")
            except BaseException:
                await rollback(conn)
                raise

    async def begin(
        self, conn: aiosqlite.Connection, action: str, read: Statement | None = None
    ) -> Any:
        """``BEGIN IMMEDIATE`` on the held connection (``begin_immediate``), then the ``read``
        statement, in one hop; returns the first row ``read`` gives (None without one). Errors
        as ``checked`` turns them. One hop, not two: the write lock is held from here, and each
        hop waits for the event loop to turn."""
        timeout = self.busy_timeout

        def begin(db: sqlite3.Connection) -> Any:
            begin_immediate(db, timeout)
            return None if read is None else db.execute(*read).fetchone()

        try:
            return await on_thread(conn, begin)
        except sqlite3.Error as exc:
            raise self.error(action, exc) from exc

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
            raise self.error(action, exc) from exc

    def error(self, action: str, exc: sqlite3.Error) -> ProgressStoreError:
        """``exc`` as the one-line error naming the file and the ``action``: ``StoreBusy`` when
        another connection held the lock too long, else ``ProgressStoreError``."""
        error = StoreBusy if _is_busy(exc) else ProgressStoreError
        return error(f"{self.path}: cannot {action}: {reason(exc)}")

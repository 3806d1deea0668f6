"""SQLite plumbing shared by the stores and sinks: connect in WAL mode, run, roll back."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiosqlite

__all__ = ["connect", "fetch", "reason", "rollback"]


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
        deadline = time.monotonic() + busy_timeout
        delay = 0.001
        while True:
            try:
                await fetch(conn, "PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.05)
        await fetch(conn, "PRAGMA synchronous=FULL")
    except BaseException:
        await conn.close()
        raise
    return conn


async def fetch(conn: aiosqlite.Connection, sql: str, params: Iterable[Any] = ()) -> list[Any]:
    """Execute one statement and fetch its rows (closing the cursor)."""
    return list(await conn.execute_fetchall(sql, params))


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

"""SqliteDatabaseSink: a DatabaseSink on an SQLite file."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import aiosqlite

from .._sqlite import begin_immediate, connect, on_thread, rollback
from ..progress.sqlite import SqliteProgressStore
from ._base import DatabaseSink

MessageT = TypeVar("MessageT")

__all__ = ["SqliteDatabaseSink"]

#: Seconds a commit waits for another connection to release the file's write lock.
BUSY_TIMEOUT = 30.0


class SqliteDatabaseSink(DatabaseSink[MessageT]):
    """A DatabaseSink whose rows live in the SQLite file ``path``; with ``path`` None, or the
    file of the ``SqliteProgressStore``, every batch commits with the watermark.

    ``write`` gets an ``aiosqlite.Connection``; ``indexer.sinks.on_thread(connection, fn)``
    runs ``fn(sqlite3 connection)`` in one hop to its thread, for many statements at once.
    Its own connection (WAL, ``synchronous=FULL``) opens at the first commit that needs it;
    its transactions (a commit, a chunk of a prune) take turns on it.
    """

    database_key: ClassVar[str] = "path"
    database_kind: ClassVar[str] = "SQLite"

    def __init__(self, path: str | os.PathLike[str] | None = None, **limits: Any) -> None:
        super().__init__(**limits)
        self.path = Path(path) if path is not None else None
        self._conn: aiosqlite.Connection | None = None
        self._turn = asyncio.Lock()  # one transaction at a time on the one connection

    @property
    def own_database(self) -> Path | None:
        return self.path

    def store_type(self) -> type[SqliteProgressStore]:
        return SqliteProgressStore

    def same_database(self, store: SqliteProgressStore) -> bool:
        return self.path is not None and self.path.resolve() == store.path.resolve()

    @asynccontextmanager
    async def own_transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        assert self.path is not None
        async with self._turn:
            if self._conn is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._conn = await connect(self.path, busy_timeout=BUSY_TIMEOUT)
            conn = self._conn
            await on_thread(conn, lambda db: begin_immediate(db, BUSY_TIMEOUT))
            try:
                yield conn
            except BaseException:
                await rollback(conn)
                raise
            await conn.execute("COMMIT")

    async def close_own_connection(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

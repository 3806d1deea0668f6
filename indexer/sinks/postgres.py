"""PostgresDatabaseSink: a DatabaseSink on a PostgreSQL database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar, TypeVar

import asyncpg

from .._dsn import same_database
from .._postgres import CONNECT_TIMEOUT, close_pool
from ..progress.postgres import PostgresProgressStore
from ._base import DatabaseSink

MessageT = TypeVar("MessageT")

__all__ = ["PostgresDatabaseSink"]


class PostgresDatabaseSink(DatabaseSink[MessageT]):
    """A DatabaseSink whose rows live in the PostgreSQL database ``dsn``; with ``dsn`` None,
    or naming the ``PostgresProgressStore``'s database (same hosts, port, database and user),
    every batch commits with the watermark.

    ``write`` gets an ``asyncpg.Connection``. Its own pool (two connections) opens at the first
    commit that needs it. Change no session state on a connection (``SET LOCAL``, not ``SET``).
    """

    database_key: ClassVar[str] = "dsn"
    database_kind: ClassVar[str] = "PostgreSQL"

    def __init__(self, dsn: str | None = None, **limits: Any) -> None:
        super().__init__(**limits)
        self.dsn = dsn
        self._pool: asyncpg.Pool | None = None

    @property
    def own_database(self) -> str | None:
        return self.dsn

    def store_type(self) -> type[PostgresProgressStore]:
        return PostgresProgressStore

    def same_database(self, store: PostgresProgressStore) -> bool:
        return self.dsn is not None and same_database(self.dsn, store.dsn)

    @asynccontextmanager
    async def own_transaction(self) -> AsyncIterator[asyncpg.Connection]:
        assert self.dsn is not None
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self.dsn, min_size=1, max_size=2, timeout=CONNECT_TIMEOUT
            )
        async with self._pool.acquire() as conn, conn.transaction():
            yield conn

    async def close_own_connection(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await close_pool(pool)

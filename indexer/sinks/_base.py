"""DatabaseSink: what every sink that writes batches into a SQL database shares."""

from __future__ import annotations

import asyncio
import time
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar, TypeVar

from ..errors import ConfigurationError
from ..progress import ProgressStore, TransactionalProgressStore, base_store
from ..reducer import Reducer

MessageT = TypeVar("MessageT")

_UNSET: Any = object()

__all__ = ["DatabaseSink"]


class DatabaseSink(Reducer[MessageT]):
    """A Reducer that writes each batch into a SQL database in one transaction.

    When the sink's database is the progress store's (its ``path`` or ``dsn`` unset, or naming
    the store's own database), each batch is written in the store's transaction together with
    the watermark: **exactly once**, whatever moment a crash happens. Otherwise the sink keeps
    a connection of its own and commits each batch in a transaction of its own before the
    watermark is saved: **at least once** (make replays harmless with an upsert).

    A sink author implements ``write(connection, batch)``: the statements for one batch, no
    commit or rollback. The backends (``SqliteDatabaseSink``, ``PostgresDatabaseSink``) tell
    whether a store shares the sink's database and open the sink's own transactions.
    ``label`` names the sink in errors.

    With a pipeline's ``retention`` the sink deletes the rows of old checkpoints in the
    background (``prune``): at most ``prune_chunk_size`` rows per transaction, each on the
    database the batches go to, with a pause as long as the chunk took before the next, so
    that a commit waiting for the write lock gets it within one chunk.
    """

    #: What the setting naming the sink's own database is called ("path", "dsn").
    database_key: ClassVar[str]
    #: The kind of database, for errors ("SQLite").
    database_kind: ClassVar[str]
    #: The column holding each row's checkpoint number, if any: with it the sink can delete
    #: the rows a re-index would write again (``indexer reset --delete-rows``).
    checkpoint_column: str | None = None
    #: The most rows one of ``prune``'s transactions deletes.
    prune_chunk_size: int = 5000
    #: Whether a pipeline's retention prunes this sink (``enable_pruning``): a sink may keep
    #: what pruning needs only then (an index on the checkpoint column, counts by checkpoint).
    prunes: bool = False

    def __init__(self, *, prune_chunk_size: int = _UNSET, **limits: Any) -> None:
        super().__init__(**limits)
        if prune_chunk_size is not _UNSET:
            self.prune_chunk_size = prune_chunk_size

    @property
    def label(self) -> str:
        """How errors name this sink (its class name unless a subclass says more)."""
        return type(self).__name__

    @property
    def own_database(self) -> Any:
        """The sink's own database (a path, a DSN), or None for the progress store's."""
        raise NotImplementedError

    # -- the author's part -------------------------------------------------------------------

    async def write(self, connection: Any, batch: list[MessageT]) -> None:
        """Write ``batch`` (never empty, in checkpoint order) with ``connection``, inside a
        transaction someone else commits: do not commit or roll back."""
        raise NotImplementedError(f"{type(self).__name__} must implement write")

    async def delete_from(self, connection: Any, checkpoint: int) -> int:
        """Delete the rows of checkpoints ``checkpoint`` and later with ``connection``, inside
        a transaction someone else commits; return how many went. Only for a sink with a
        ``checkpoint_column``."""
        raise NotImplementedError(f"{self.label} cannot delete rows by checkpoint")

    async def delete_below(self, connection: Any, checkpoint: int, limit: int) -> int:
        """Delete at most about ``limit`` rows of checkpoints below ``checkpoint`` with
        ``connection``, inside a transaction someone else commits; return how many went (0
        when none is left). The mirror of ``delete_from``, for retention."""
        raise NotImplementedError(f"{self.label} cannot delete rows by checkpoint")

    # -- the backend's part ------------------------------------------------------------------

    def shares_database(self, store: Any) -> bool:
        """Whether ``store`` is a progress store on this sink's database: of the backend's
        kind, and the sink's own database unset or the same as the store's."""
        if not isinstance(store, self.store_type()):
            return False
        return self.own_database is None or self.same_database(store)

    def store_type(self) -> type[Any]:
        """The progress store class on the backend's kind of database."""
        raise NotImplementedError

    def same_database(self, store: Any) -> bool:
        """Whether the sink's own database is ``store``'s."""
        raise NotImplementedError

    def own_transaction(self) -> AbstractAsyncContextManager[Any]:
        """A transaction on the sink's own connection: commits when the block ends cleanly,
        rolls back (even when cancelled) when it raises."""
        raise NotImplementedError

    async def close_own_connection(self) -> None:
        """Close the sink's own connection or pool, if it opened one."""

    # -- the Reducer's methods, once for every database sink ---------------------------------

    def check_store(self, store: Any) -> None:
        if self.own_database is None and not self.shares_database(store):
            key, kind = self.database_key, self.database_kind
            raise ConfigurationError(
                f"{self.label}: no {key} is set and the progress store "
                f"({type(store).__name__}) is not {kind}; set {key} or use a {kind} store"
            )

    def uses_store_transaction(self, store: Any) -> bool:
        return self.shares_database(store)

    async def commit_in_transaction(self, connection: Any, batch: list[MessageT]) -> None:
        await self.write(connection, batch)

    async def commit(self, batch: list[MessageT]) -> None:
        if self.own_database is None:
            raise ConfigurationError(
                f"{self.label} has no {self.database_key} and the progress store is not "
                f"{self.database_kind}"
            )
        async with self.own_transaction() as connection:
            await self.write(connection, batch)

    async def close(self) -> None:
        """Close the sink's own connection, if it opened one."""
        await self.close_own_connection()

    def validate(self) -> None:
        super().validate()
        size = self.prune_chunk_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigurationError(
                f"must be a positive integer, got {size!r}",
                key="prune_chunk_size",
                where=self.label,
            )

    def enable_pruning(self) -> None:
        """Refuse a sink that records no checkpoint of its rows; otherwise prune from now on."""
        if self.checkpoint_column is None:
            raise ConfigurationError(
                f"{self.label} cannot prune its rows: it records no checkpoint of them "
                "(checkpoint_column)"
            )
        self.prunes = True

    async def prune(self, below: int, store: Any) -> int:
        """``delete_below`` in transactions of ``prune_chunk_size`` rows until none is left,
        on the store's database when the sink shares it, else on its own."""
        store = base_store(store)
        deleted = 0
        while True:
            started = time.monotonic()
            if self.uses_store_transaction(store):
                transaction = store.write_transaction(f"prune {self.label}")
            else:
                transaction = self.own_transaction()
            async with transaction as connection:
                chunk = await self.delete_below(connection, below, self.prune_chunk_size)
            if not chunk:
                return deleted
            deleted += chunk
            await asyncio.sleep(time.monotonic() - started)  # the write lock is free meanwhile

    async def rewind(self, store: ProgressStore, pipeline: str, watermark: int) -> int:
        """Set ``pipeline``'s watermark to ``watermark`` (lower included) and delete the rows
        of checkpoints from there on; returns how many rows went. Sharing the store's
        database, both happen in one transaction; on a database of its own, the watermark
        first, so that a crash in between leaves rows to be written again, never a gap."""
        if self.uses_store_transaction(store):
            assert isinstance(store, TransactionalProgressStore)
            async with store.rewind(pipeline, watermark) as connection:
                return await self.delete_from(connection, watermark)
        self.check_store(store)
        await store.reset(pipeline, watermark)
        async with self.own_transaction() as connection:
            return await self.delete_from(connection, watermark)

"""The default progress store: an embedded SQLite database that sinks may share."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosqlite
import msgspec

from .._sqlite import SharedConnection, rollback
from ..errors import AlreadyCommitted
from ._base import DeadLetter, Stall
from .leased import DatabaseStore

if TYPE_CHECKING:
    from ..claims import SqliteClaimStore

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS indexer_watermarks (
        pipeline TEXT PRIMARY KEY,
        next_checkpoint INTEGER NOT NULL,
        updated_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS indexer_dead_letters (
        pipeline TEXT,
        sequence_number INTEGER,
        error TEXT,
        recorded_at REAL,
        PRIMARY KEY (pipeline, sequence_number)
    )""",
    # Added after the first release: a file an earlier version made gets it when opened.
    """CREATE TABLE IF NOT EXISTS indexer_stalls (
        pipeline TEXT,
        checkpoint INTEGER,
        attempts INTEGER NOT NULL,
        error TEXT NOT NULL,
        location TEXT NOT NULL,
        failing_since REAL NOT NULL,
        committed_at REAL NOT NULL,
        reported_at REAL NOT NULL,
        PRIMARY KEY (pipeline, checkpoint)
    )""",
    # Added with retention, the same way: the rows of checkpoints below ``below`` are deleted.
    """CREATE TABLE IF NOT EXISTS indexer_pruned (
        pipeline TEXT PRIMARY KEY,
        below INTEGER NOT NULL,
        pruned_at REAL NOT NULL
    )""",
)

_RAISE = """
    INSERT INTO indexer_watermarks (pipeline, next_checkpoint, updated_at) VALUES (?, ?, ?)
    ON CONFLICT (pipeline) DO UPDATE
    SET next_checkpoint = excluded.next_checkpoint, updated_at = excluded.updated_at
    WHERE excluded.next_checkpoint > indexer_watermarks.next_checkpoint
"""

_RESET = """
    INSERT INTO indexer_watermarks (pipeline, next_checkpoint, updated_at) VALUES (?, ?, ?)
    ON CONFLICT (pipeline) DO UPDATE
    SET next_checkpoint = excluded.next_checkpoint, updated_at = excluded.updated_at
"""

_ADD_DEAD_LETTER = """
    INSERT INTO indexer_dead_letters (pipeline, sequence_number, error, recorded_at)
    VALUES (?, ?, ?, ?)
    ON CONFLICT (pipeline, sequence_number) DO UPDATE
    SET error = excluded.error, recorded_at = excluded.recorded_at
"""

_REPORT_STALL = """
    INSERT OR REPLACE INTO indexer_stalls (pipeline, checkpoint, attempts, error, location,
        failing_since, committed_at, reported_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""

_STALL_COLUMNS = (
    "pipeline, checkpoint, attempts, error, location, failing_since, committed_at, reported_at"
)
_FORGET_STALLS = "DELETE FROM indexer_stalls WHERE pipeline = ?"

_RECORD_PRUNED = """
    INSERT INTO indexer_pruned (pipeline, below, pruned_at) VALUES (?, ?, ?)
    ON CONFLICT (pipeline) DO UPDATE
    SET below = excluded.below, pruned_at = excluded.pruned_at
    WHERE excluded.below > indexer_pruned.below
"""
#: A reset lowers the mark to the new watermark: what is re-indexed is written again.
_LOWER_PRUNED = "UPDATE indexer_pruned SET below = ? WHERE pipeline = ? AND below > ?"

_LOAD = "SELECT next_checkpoint FROM indexer_watermarks WHERE pipeline = ?"
_ORDER = " ORDER BY sequence_number, pipeline"


class SqliteProgressStore(DatabaseStore):
    """Watermarks, dead letters, stalls and pruned-below marks in SQLite (WAL,
    ``synchronous=FULL``) via aiosqlite.

    One connection serves the store; an asyncio lock keeps ``save`` and an open ``transaction``
    from interleaving on it. A sink whose tables live in the same file (compare ``.path``) can
    write its rows and the watermark in one transaction. Methods open the store lazily.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._db = SharedConnection(
            self.path,
            what="progress database",
            reentry="progress store called inside its own transaction; "
            "use the connection the transaction yields",
            schema=_SCHEMA,
            opener=self.open,
        )

    async def open(self) -> None:
        """Connect, create the parent directory and the tables; idempotent."""
        await self._db.open()
        await super().open()

    async def close(self) -> None:
        """Close the connection, after any open transaction has ended; idempotent."""
        await self._db.close()
        await super().close()

    async def load(self, pipeline: str) -> int | None:
        """The pipeline's watermark, or None when it has never saved one."""
        rows = await self._db.run("load", _LOAD, (pipeline,))
        return rows[0][0] if rows else None

    async def save(self, pipeline: str, watermark: int) -> int:
        """Raise the watermark with one rise-only upsert; returns the value now stored."""
        statements = [(_RAISE, (pipeline, watermark, time.time())), (_LOAD, (pipeline,))]
        rows = await self._db.run_all("save", statements)
        return int(rows[0][0])

    async def reset(self, pipeline: str, watermark: int) -> None:
        """Set the watermark to any value, lower included, forget the pipeline's stalls and
        lower its pruned-below mark to the watermark."""
        async with self._db.immediate("reset") as conn:
            await self._db.checked_all(conn, "reset", _resetting(pipeline, watermark))

    async def drop(self, pipeline: str) -> None:
        """Delete the pipeline's watermark, dead letters, stalls and pruned-below mark."""
        tables = ("indexer_watermarks", "indexer_dead_letters", "indexer_stalls", "indexer_pruned")
        async with self._db.immediate("drop a pipeline") as conn:
            for table in tables:
                sql = f"DELETE FROM {table} WHERE pipeline = ?"
                await self._db.checked(conn, "drop a pipeline", sql, (pipeline,))

    @asynccontextmanager
    async def rewind(self, pipeline: str, watermark: int) -> AsyncIterator[aiosqlite.Connection]:
        """Yield the connection inside ``BEGIN IMMEDIATE``; set the watermark (lower included)
        and commit on a clean exit, roll everything back if the block raises."""
        async with self._db.immediate("rewind") as conn:
            yield conn
            await self._db.checked_all(conn, "rewind", _resetting(pipeline, watermark))

    @asynccontextmanager
    async def write_transaction(self, action: str) -> AsyncIterator[aiosqlite.Connection]:
        """Yield the connection inside ``BEGIN IMMEDIATE`` (the file's write lock, polled);
        commit on a clean exit, roll back if the block raises."""
        async with self._db.immediate(action) as conn:
            yield conn

    async def watermarks(self) -> dict[str, int]:
        """Every pipeline's watermark."""
        rows = await self._db.run(
            "load", "SELECT pipeline, next_checkpoint FROM indexer_watermarks"
        )
        return {pipeline: value for pipeline, value in rows}

    async def add_dead_letter(self, pipeline: str, sequence_number: int, error: str) -> None:
        """Record a skipped checkpoint (replacing an earlier record of it)."""
        params = (pipeline, sequence_number, error, time.time())
        await self._db.run("save a dead letter", _ADD_DEAD_LETTER, params)

    async def dead_letters(self, pipeline: str | None = None) -> list[DeadLetter]:
        """Dead letters of one pipeline or all, sorted by sequence number then pipeline."""
        sql = "SELECT pipeline, sequence_number, error, recorded_at FROM indexer_dead_letters"
        params: tuple[Any, ...] = ()
        if pipeline is not None:
            sql += " WHERE pipeline = ?"
            params = (pipeline,)
        rows = await self._db.run("load dead letters", sql + _ORDER, params)
        return [DeadLetter(p, s, e, r) for p, s, e, r in rows]

    async def report_stall(self, stall: Stall) -> None:
        """Record a stall (replacing an earlier record of its checkpoint)."""
        await self._db.run("record a stall", _REPORT_STALL, msgspec.structs.astuple(stall))

    async def clear_stall(self, pipeline: str, checkpoint: int) -> None:
        """Forget the stall of ``pipeline`` at ``checkpoint``."""
        sql = "DELETE FROM indexer_stalls WHERE pipeline = ? AND checkpoint = ?"
        await self._db.run("clear a stall", sql, (pipeline, checkpoint))

    async def stalls(self, pipeline: str | None = None) -> list[Stall]:
        """Stalls of one pipeline or all, sorted by checkpoint then pipeline."""
        sql = f"SELECT {_STALL_COLUMNS} FROM indexer_stalls"
        params: tuple[Any, ...] = ()
        if pipeline is not None:
            sql += " WHERE pipeline = ?"
            params = (pipeline,)
        rows = await self._db.run("load stalls", sql + " ORDER BY checkpoint, pipeline", params)
        return [Stall(*row) for row in rows]

    async def record_pruned(self, pipeline: str, below: int) -> None:
        """Raise the pipeline's pruned-below mark (rise-only)."""
        await self._db.run("record a pruned mark", _RECORD_PRUNED, (pipeline, below, time.time()))

    async def pruned_below(self, pipeline: str) -> int | None:
        """The pipeline's pruned-below mark, or None."""
        sql = "SELECT below FROM indexer_pruned WHERE pipeline = ?"
        rows = await self._db.run("load a pruned mark", sql, (pipeline,))
        return int(rows[0][0]) if rows else None

    def claim_store(self) -> SqliteClaimStore:
        """The claim store in this store's file."""
        from ..claims import SqliteClaimStore

        return SqliteClaimStore(self.path)

    async def watermark_in(self, connection: aiosqlite.Connection, pipeline: str) -> int | None:
        """The stored watermark, read in ``connection``'s transaction."""
        rows = await self._db.checked(connection, "load", _LOAD, (pipeline,))
        return int(rows[0][0]) if rows else None

    async def raise_watermark(
        self, connection: aiosqlite.Connection, pipeline: str, watermark: int
    ) -> int:
        """Raise the watermark (rise-only) in ``connection``'s open transaction; returns the
        value now stored."""
        statements = [(_RAISE, (pipeline, watermark, time.time())), (_LOAD, (pipeline,))]
        rows = await self._db.checked_all(connection, "save", statements)
        return int(rows[0][0])

    @asynccontextmanager
    async def transaction(
        self, pipeline: str, watermark: int, *, recheck: bool = False
    ) -> AsyncIterator[aiosqlite.Connection]:
        """Yield the connection inside ``BEGIN IMMEDIATE``; commit rows and watermark together.

        On a clean exit the watermark is raised (rise-only) in the same transaction and it
        commits; if the block raises, everything rolls back and the error propagates unchanged.
        The block must not commit or roll back itself, nor call this store's other methods.
        """
        async with self._db.exclusive() as conn:
            try:
                # Taking the lock and reading the stored position: one hop.
                row = await self._db.begin(
                    conn, "begin a transaction", (_LOAD, (pipeline,)) if recheck else None
                )
                if recheck:
                    AlreadyCommitted.check(pipeline, None if row is None else row[0], watermark)
                yield conn
                raise_watermark = (_RAISE, (pipeline, watermark, time.time()))
                await self._db.checked_all(conn, "commit", [raise_watermark, ("COMMIT", ())])
            except BaseException:
                await rollback(conn)
                raise


def _resetting(pipeline: str, watermark: int) -> list[tuple[str, tuple[Any, ...]]]:
    """What a reset writes: the watermark, no stalls, the pruned-below mark no higher."""
    return [
        (_RESET, (pipeline, watermark, time.time())),
        (_FORGET_STALLS, (pipeline,)),
        (_LOWER_PRUNED, (watermark, pipeline, watermark)),
    ]

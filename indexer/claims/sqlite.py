"""A claim store in one SQLite file: leases shared safely by many processes on one machine."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from .._sqlite import SharedConnection, fetch, rollback
from ..errors import AlreadyCommitted
from . import _base
from ._base import ChunkLayout, ChunkState, Claim, ClaimStore, Clock

__all__ = ["SqliteClaimStore"]

_SCHEMA = """CREATE TABLE IF NOT EXISTS indexer_claims (
    pipeline TEXT NOT NULL,
    chunk INTEGER NOT NULL,
    owner TEXT,
    token INTEGER NOT NULL DEFAULT 0,
    expires_at REAL,
    done INTEGER NOT NULL DEFAULT 0,
    progress INTEGER,
    claimed_at REAL,
    renewed_at REAL,
    PRIMARY KEY (pipeline, chunk)
)"""
#: Columns later versions added, for files an earlier version created.
_ADDED_COLUMNS = {"claimed_at": "REAL", "renewed_at": "REAL"}
_COLUMNS = "PRAGMA table_info(indexer_claims)"
_LAYOUT_SCHEMA = """CREATE TABLE IF NOT EXISTS indexer_chunk_layouts (
    pipeline TEXT PRIMARY KEY,
    first_checkpoint INTEGER NOT NULL,
    chunk_size INTEGER NOT NULL
)"""

_ROW = "SELECT owner, token, expires_at, done FROM indexer_claims WHERE pipeline = ? AND chunk = ?"
# A new token starts a new claim (claimed_at); keeping the token renews the one held.
_UPSERT = """
    INSERT INTO indexer_claims (pipeline, chunk, owner, token, expires_at, claimed_at, renewed_at)
    VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (pipeline, chunk) DO UPDATE
    SET owner = excluded.owner, token = excluded.token, expires_at = excluded.expires_at,
        claimed_at = CASE WHEN indexer_claims.token = excluded.token
                          THEN indexer_claims.claimed_at ELSE excluded.claimed_at END,
        renewed_at = excluded.renewed_at
"""
_STATE = "chunk, owner, token, expires_at, done, progress, claimed_at, renewed_at"
# The one-writer rule: a live lease on the whole pipeline, or on any of its chunks.
_WHOLE_HELD = f"""
    SELECT 1 FROM indexer_claims WHERE pipeline = ? AND chunk = {_base.WHOLE}
      AND owner IS NOT NULL AND expires_at > ? AND owner != ?"""
_CHUNK_HELD = """
    SELECT 1 FROM indexer_claims WHERE pipeline = ? AND chunk >= 0
      AND owner IS NOT NULL AND expires_at > ?"""
_AVAILABLE = """
    SELECT chunk FROM indexer_claims
    WHERE pipeline = ? AND NOT done AND (owner IS NULL OR expires_at <= ?)
      AND chunk >= ? AND chunk < ?
    ORDER BY chunk LIMIT ?
"""
_ENSURE = """
    INSERT OR IGNORE INTO indexer_claims (pipeline, chunk)
    WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?)
    SELECT ?, i FROM n
"""
_LAYOUT = "SELECT first_checkpoint, chunk_size FROM indexer_chunk_layouts WHERE pipeline = ?"
_SET_PROGRESS = "UPDATE indexer_claims SET progress = ? WHERE pipeline = ? AND chunk = ?"
_PROGRESS = "SELECT progress FROM indexer_claims WHERE pipeline = ? AND chunk = ?"
_FENCE = """SELECT owner, token, expires_at, done, progress FROM indexer_claims
            WHERE pipeline = ? AND chunk = ?"""
# Done chunks counted while their number equals their rank: the gap-free prefix from 0.
_PREFIX = """
    SELECT count(*) FROM (
        SELECT chunk, row_number() OVER (ORDER BY chunk) - 1 AS rank
        FROM indexer_claims WHERE pipeline = ? AND done
    ) WHERE chunk = rank
"""


def _state(row: tuple[Any, ...]) -> ChunkState:
    chunk, owner, token, expires_at, done, progress, claimed_at, renewed_at = row
    return ChunkState(chunk, owner, token, expires_at, bool(done), progress, claimed_at, renewed_at)


class SqliteClaimStore(ClaimStore):
    """Leases, progress and completion of chunks in an SQLite file (WAL, ``busy_timeout``).

    Every write runs in ``BEGIN IMMEDIATE``, which takes the file's write lock before reading
    the row it decides on, so processes sharing the file never both win a chunk. One
    connection serves the store; an asyncio lock keeps its users from interleaving.
    ``busy_timeout`` (seconds) is how long a writer waits for another process's lock.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock = time.time,
        busy_timeout: float = 30.0,
    ) -> None:
        self.path = Path(path)
        self.clock = clock
        self.busy_timeout = busy_timeout
        self._db = SharedConnection(
            self.path,
            what="claim database",
            reentry="claim store called inside its own fenced transaction; "
            "use the connection it yields",
            schema=(_SCHEMA, _LAYOUT_SCHEMA),
            busy_timeout=busy_timeout,
            opener=self.open,
            setup=self._add_columns,
        )

    def __repr__(self) -> str:
        return f"SqliteClaimStore({str(self.path)!r})"

    async def open(self) -> None:
        """Connect, create the parent directory and the tables; idempotent."""
        await self._db.open()

    @staticmethod
    async def _add_columns(conn: aiosqlite.Connection) -> None:
        """Add the columns a file an earlier version made lacks (under the write lock, so that
        processes opening it together add each once)."""
        await fetch(conn, "BEGIN IMMEDIATE")
        try:
            present = {row[1] for row in await fetch(conn, _COLUMNS)}
            for name, kind in _ADDED_COLUMNS.items():
                if name not in present:
                    await fetch(conn, f"ALTER TABLE indexer_claims ADD COLUMN {name} {kind}")
            await fetch(conn, "COMMIT")
        except BaseException:
            await rollback(conn)
            raise

    async def close(self) -> None:
        """Close the connection, after any open transaction has ended; idempotent."""
        await self._db.close()

    async def ensure_chunks(self, pipeline: str, count: int) -> None:
        """Create the rows of chunks 0..count-1 that are missing; existing rows are untouched."""
        if count > 0:
            async with self._db.immediate("create chunks") as conn:
                await self._db.checked(conn, "create chunks", _ENSURE, (count, pipeline))

    async def claim(self, pipeline: str, chunk: int, owner: str, ttl: float) -> Claim | None:
        """Lease ``chunk`` to ``owner`` until now + ttl, or None if it is held or done."""
        _base.check_chunk(chunk)
        ttl = _base.check_ttl(ttl)
        async with self._db.immediate("claim") as conn:
            now = self.clock()
            if await self._forbidden(conn, pipeline, chunk, owner, now):
                return None
            rows = await self._db.checked(conn, "claim", _ROW, (pipeline, chunk))
            token = _base.new_token(rows[0] if rows else None, owner, now)
            if token is None:
                return None
            params = (pipeline, chunk, owner, token, now + ttl, now, now)
            await self._db.checked(conn, "claim", _UPSERT, params)
        return Claim(pipeline, chunk, owner, token, now + ttl)

    async def claim_next(
        self, pipeline: str, owner: str, ttl: float, chunks: range | None = None
    ) -> Claim | None:
        """Claim the lowest available chunk (within ``chunks``), or None if none is available."""
        ttl = _base.check_ttl(ttl)
        low, high = _base.chunk_bounds(chunks)
        async with self._db.immediate("claim") as conn:
            now = self.clock()
            if await self._forbidden(conn, pipeline, 0, owner, now):
                return None
            found = await self._db.checked(conn, "claim", _AVAILABLE, (pipeline, now, low, high, 1))
            if not found:
                return None
            chunk = found[0][0]
            row = (await self._db.checked(conn, "claim", _ROW, (pipeline, chunk)))[0]
            token = _base.new_token(row, owner, now)
            assert token is not None  # available, and the write lock is ours
            params = (pipeline, chunk, owner, token, now + ttl, now, now)
            await self._db.checked(conn, "claim", _UPSERT, params)
        return Claim(pipeline, chunk, owner, token, now + ttl)

    async def extend(self, claim: Claim, ttl: float) -> Claim:
        """Renew the lease to now + ttl; ClaimLost / ClaimNotFound when it is not ours."""
        ttl = _base.check_ttl(ttl)
        async with self._db.immediate("extend a claim") as conn:
            await self._check(conn, claim, live=False)
            now = self.clock()
            sql = """UPDATE indexer_claims SET expires_at = ?, renewed_at = ?
                     WHERE pipeline = ? AND chunk = ?"""
            await self._db.checked(
                conn, "extend a claim", sql, (now + ttl, now, claim.pipeline, claim.chunk)
            )
        return Claim(claim.pipeline, claim.chunk, claim.owner, claim.token, now + ttl)

    async def release(self, claim: Claim, done: bool = False) -> None:
        """Give the lease up (``done``: the chunk is complete); errors as ``extend``."""
        async with self._db.immediate("release a claim") as conn:
            await self._check(conn, claim, live=False)
            sql = """UPDATE indexer_claims SET owner = NULL, expires_at = NULL, done = done OR ?
                     WHERE pipeline = ? AND chunk = ?"""
            await self._db.checked(
                conn, "release a claim", sql, (done, claim.pipeline, claim.chunk)
            )

    async def holders(self, pipeline: str) -> list[ChunkState]:
        """The live leases on the pipeline (``WHOLE`` included), in chunk order."""
        sql = f"""SELECT {_STATE} FROM indexer_claims
                  WHERE pipeline = ? AND owner IS NOT NULL AND expires_at > ? ORDER BY chunk"""
        rows = await self._db.run("list lease holders", sql, (pipeline, self.clock()))
        return [_state(row) for row in rows]

    async def expire(self, pipeline: str, state: ChunkState) -> bool:
        """End ``state``'s lease now if nobody took it since."""
        sql = """UPDATE indexer_claims SET expires_at = ?
                 WHERE pipeline = ? AND chunk = ? AND owner = ? AND token = ?"""
        params = (self.clock(), pipeline, state.chunk, state.owner, state.token)
        async with self._db.immediate("end a lease") as conn:
            rows = await self._db.checked_all(
                conn, "end a lease", [(sql, params), ("SELECT changes()", ())]
            )
        return bool(rows[0][0])

    async def find_available(
        self, pipeline: str, limit: int, chunks: range | None = None
    ) -> list[int]:
        """Up to ``limit`` claimable chunk rows (within ``chunks``), lowest first."""
        low, high = _base.chunk_bounds(chunks)
        params = (pipeline, self.clock(), low, high, max(limit, 0))
        rows = await self._db.run("find available chunks", _AVAILABLE, params)
        return [row[0] for row in rows]

    async def save_progress(self, claim: Claim, next_checkpoint: int) -> None:
        """Store the chunk's progress while ``claim`` is a live lease, else ClaimLost."""
        async with self._db.immediate("save progress") as conn:
            await self._check(conn, claim, live=True)
            params = (next_checkpoint, claim.pipeline, claim.chunk)
            await self._db.checked(conn, "save progress", _SET_PROGRESS, params)

    async def progress(self, pipeline: str, chunk: int) -> int | None:
        """The chunk's saved next checkpoint, or None."""
        rows = await self._db.run("load progress", _PROGRESS, (pipeline, chunk))
        return rows[0][0] if rows else None

    @asynccontextmanager
    async def fenced(
        self, claim: Claim, next_checkpoint: int | None = None, *, recheck: bool = False
    ) -> AsyncIterator[aiosqlite.Connection]:
        """Yield the connection inside ``BEGIN IMMEDIATE`` after checking the lease is live;
        check it again, save ``next_checkpoint`` and commit on a clean exit, roll back if the
        block raises (see ``ClaimStore.fenced``). The lock is held from the first hop to the
        thread to the last: taking it and reading the lease are one hop, saving and committing
        another."""
        db = self._db
        async with db.exclusive() as conn:
            try:
                where = (claim.pipeline, claim.chunk)
                row = await db.begin(conn, "begin a fenced transaction", (_FENCE, where))
                _base.check_holder(claim, row[:4] if row else None, self.clock(), live=True)
                expires_at = float(row[2])
                if recheck and next_checkpoint is not None:
                    AlreadyCommitted.check(claim.pipeline, row[4], next_checkpoint)
                yield conn
                # The write lock is this transaction's: only the clock can end the lease.
                _base.check_alive(claim, expires_at, self.clock())
                final: list[tuple[str, tuple[Any, ...]]] = [("COMMIT", ())]
                if next_checkpoint is not None:
                    final.insert(0, (_SET_PROGRESS, (next_checkpoint, *where)))
                await db.checked_all(conn, "save progress", final)
            except BaseException:
                await rollback(conn)
                raise

    async def adopt_layout(self, pipeline: str, layout: ChunkLayout) -> ChunkLayout:
        """Record ``layout`` unless the pipeline has one; return the recorded one."""
        insert = """INSERT OR IGNORE INTO indexer_chunk_layouts
                    (pipeline, first_checkpoint, chunk_size) VALUES (?, ?, ?)"""
        async with self._db.immediate("record the chunk layout") as conn:
            params = (pipeline, layout.first, layout.chunk_size)
            await self._db.checked(conn, "record the chunk layout", insert, params)
            rows = await self._db.checked(conn, "record the chunk layout", _LAYOUT, (pipeline,))
        return ChunkLayout(*rows[0])

    async def layout(self, pipeline: str) -> ChunkLayout | None:
        """The pipeline's recorded layout, or None."""
        rows = await self._db.run("read the chunk layout", _LAYOUT, (pipeline,))
        return ChunkLayout(*rows[0]) if rows else None

    async def forget(self, pipeline: str) -> None:
        """Delete the pipeline's layout and chunk rows."""
        async with self._db.immediate("forget chunks") as conn:
            for table in ("indexer_claims", "indexer_chunk_layouts"):
                sql = f"DELETE FROM {table} WHERE pipeline = ?"
                await self._db.checked(conn, "forget chunks", sql, (pipeline,))

    async def pipelines(self) -> list[str]:
        """Every pipeline with a recorded layout, sorted."""
        sql = "SELECT pipeline FROM indexer_chunk_layouts ORDER BY pipeline"
        return [row[0] for row in await self._db.run("list chunked pipelines", sql)]

    async def chunks(self, pipeline: str) -> list[ChunkState]:
        """Every chunk row of the pipeline in chunk order (``WHOLE`` left out)."""
        sql = f"""SELECT {_STATE} FROM indexer_claims
                  WHERE pipeline = ? AND chunk >= 0 ORDER BY chunk"""
        rows = await self._db.run("list chunks", sql, (pipeline,))
        return [_state(row) for row in rows]

    async def completed_prefix(self, pipeline: str) -> int:
        """How many chunks from chunk 0 on are done without a gap."""
        rows = await self._db.run("count completed chunks", _PREFIX, (pipeline,))
        return int(rows[0][0])

    # --- plumbing ------------------------------------------------------------------------------

    async def _forbidden(
        self, conn: aiosqlite.Connection, pipeline: str, chunk: int, owner: str, now: float
    ) -> bool:
        """Whether the one-writer rule forbids ``owner`` to claim ``chunk`` now: the whole
        pipeline while a chunk is held, a chunk while the whole pipeline is."""
        if chunk == _base.WHOLE:
            return bool(await self._db.checked(conn, "claim", _CHUNK_HELD, (pipeline, now)))
        return bool(await self._db.checked(conn, "claim", _WHOLE_HELD, (pipeline, now, owner)))

    async def _check(self, conn: aiosqlite.Connection, claim: Claim, *, live: bool) -> float:
        """Raise unless the chunk's row is still ``claim``'s lease; returns when it expires."""
        rows = await self._db.checked(conn, "check a claim", _ROW, (claim.pipeline, claim.chunk))
        _base.check_holder(claim, rows[0] if rows else None, self.clock(), live=live)
        return float(rows[0][2])

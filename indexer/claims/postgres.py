"""A claim store in PostgreSQL (asyncpg): leases shared by processes on many machines."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from .._dsn import mask_dsn
from .._postgres import ERRORS, SharedPool, create_missing, quote_ident
from ..errors import AlreadyCommitted
from . import _base
from ._base import ChunkLayout, ChunkState, Claim, ClaimStore, Clock

__all__ = ["PostgresClaimStore"]

#: Columns later versions added, for tables an earlier version created.
_ADDED_COLUMNS = {"claimed_at": "DOUBLE PRECISION", "renewed_at": "DOUBLE PRECISION"}
_STATE = "chunk, owner, token, expires_at, done, progress, claimed_at, renewed_at"


def _state(row: Any) -> ChunkState:
    chunk, owner, token, expires_at, done, progress, claimed_at, renewed_at = row
    return ChunkState(
        int(chunk), owner, int(token), expires_at, done, progress, claimed_at, renewed_at
    )


class PostgresClaimStore(ClaimStore):
    """Leases, progress and completion of chunks in PostgreSQL, through an asyncpg pool.

    ``claim`` is one conditional upsert (it takes a row only when it is free, expired or the
    caller's own), so concurrent claimers on any number of machines never both win.
    ``claim_next`` and ``find_available`` pick rows with ``FOR UPDATE SKIP LOCKED`` so that
    pollers pass over rows another is claiming. Lease times come from the store's ``clock``
    (sent as parameters; the server's ``now()`` is never used), so all participants' clocks
    must agree to within a small fraction of the ttl. Database errors become a one-line
    ProgressStoreError naming the masked DSN and are not retried: the caller decides.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "public",
        clock: Clock = time.time,
        min_size: int = 1,
        max_size: int = 4,
        application_name: str | None = None,
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self.clock = clock
        self._db = SharedPool(
            dsn,
            what="claim database",
            reentry="claim store called inside its own fenced transaction; "
            "use the connection it yields",
            setup=self._create_tables,
            min_size=min_size,
            max_size=max_size,
            application_name=application_name,
        )
        qualified = quote_ident(schema, "claim store schema")
        self._table = t = f"{qualified}.indexer_claims"
        self._layouts = f"{qualified}.indexer_chunk_layouts"
        self._row = f"""SELECT owner, token, expires_at, done FROM {t}
                        WHERE pipeline = $1 AND chunk = $2 FOR UPDATE"""
        # The row, and both timeouts set for this transaction only ($3, in ms).
        self._row_bounded = f"""
            SELECT owner, token, expires_at, done,
                   set_config('idle_in_transaction_session_timeout', $3, true),
                   set_config('statement_timeout', $3, true)
            FROM {t} WHERE pipeline = $1 AND chunk = $2 FOR UPDATE"""
        # $3 owner, $4 now, $5 new expiry. Takes the row only when it is free, expired or the
        # caller's; the row lock makes a concurrent claimer re-check against the winner's row.
        # A new token starts a new claim (claimed_at); keeping the token renews the one held.
        self._claim = f"""
            INSERT INTO {t} AS c
                (pipeline, chunk, owner, token, expires_at, claimed_at, renewed_at)
            VALUES ($1, $2, $3, 1, $5, $4, $4)
            ON CONFLICT (pipeline, chunk) DO UPDATE
            SET owner = excluded.owner, expires_at = excluded.expires_at, renewed_at = $4,
                token = CASE WHEN c.owner = excluded.owner AND c.expires_at > $4
                             THEN c.token ELSE c.token + 1 END,
                claimed_at = CASE WHEN c.owner = excluded.owner AND c.expires_at > $4
                                  THEN c.claimed_at ELSE $4 END
            WHERE NOT c.done AND (c.owner IS NULL OR c.expires_at <= $4 OR c.owner = $3)
            RETURNING c.token"""
        self._available = f"""
            SELECT chunk FROM {t}
            WHERE pipeline = $1 AND NOT done AND (owner IS NULL OR expires_at <= $2)
              AND chunk >= $3 AND chunk < $4
            ORDER BY chunk LIMIT $5 FOR UPDATE SKIP LOCKED"""
        self._claim_next = f"""
            WITH pick AS ({self._available})
            UPDATE {t} AS c SET owner = $6, token = c.token + 1, expires_at = $7,
                                claimed_at = $2, renewed_at = $2
            FROM pick WHERE c.pipeline = $1 AND c.chunk = pick.chunk
            RETURNING c.chunk, c.token"""
        # The one-writer rule ($1 pipeline, $2 now, $3 owner): a live lease on the whole
        # pipeline, or on any of its chunks. Claims of one pipeline take one advisory lock,
        # so that the rule is checked and the claim made without a concurrent claim between.
        self._lock_pipeline = "SELECT pg_advisory_xact_lock(7621, hashtext($1))"
        self._whole_held = f"""
            SELECT EXISTS (SELECT 1 FROM {t} WHERE pipeline = $1 AND chunk = {_base.WHOLE}
                           AND owner IS NOT NULL AND expires_at > $2 AND owner <> $3)"""
        self._chunk_held = f"""
            SELECT EXISTS (SELECT 1 FROM {t} WHERE pipeline = $1 AND chunk >= 0
                           AND owner IS NOT NULL AND expires_at > $2)"""
        self._set_progress = f"UPDATE {t} SET progress = $3 WHERE pipeline = $1 AND chunk = $2"
        self._progress = f"SELECT progress FROM {t} WHERE pipeline = $1 AND chunk = $2"

    def __repr__(self) -> str:
        return f"PostgresClaimStore({mask_dsn(self.dsn)!r}, schema={self.schema!r})"

    async def open(self) -> None:
        """Create the pool, the schema and the table; idempotent. Fails fast when the database
        cannot be reached, with a one-line ProgressStoreError naming the masked DSN."""
        await self._db.open()

    async def _create_tables(self, conn: asyncpg.Connection) -> None:
        claims = """pipeline TEXT NOT NULL,
            chunk BIGINT NOT NULL,
            owner TEXT,
            token BIGINT NOT NULL DEFAULT 0,
            expires_at DOUBLE PRECISION,
            done BOOLEAN NOT NULL DEFAULT false,
            progress BIGINT,
            claimed_at DOUBLE PRECISION,
            renewed_at DOUBLE PRECISION,
            PRIMARY KEY (pipeline, chunk)"""
        layouts = """pipeline TEXT PRIMARY KEY,
            first_checkpoint BIGINT NOT NULL,
            chunk_size BIGINT NOT NULL"""
        await create_missing(conn, self.schema, {self._table: claims, self._layouts: layouts})
        present = await conn.fetchval(  # pg_attribute: information_schema takes 5-15 ms
            "SELECT count(*) FROM pg_attribute WHERE attrelid = $1::regclass"
            " AND attname = ANY($2::text[]) AND NOT attisdropped",
            self._table,
            list(_ADDED_COLUMNS),
        )
        if present < len(_ADDED_COLUMNS):  # a table an earlier version created
            added = ", ".join(
                f"ADD COLUMN IF NOT EXISTS {c} {k}" for c, k in _ADDED_COLUMNS.items()
            )
            await conn.execute(f"ALTER TABLE {self._table} {added}")

    async def close(self) -> None:
        """Close the pool; idempotent."""
        await self._db.close()

    async def ensure_chunks(self, pipeline: str, count: int) -> None:
        """Create the rows of chunks 0..count-1 that are missing; existing rows are untouched."""
        sql = f"""INSERT INTO {self._table} (pipeline, chunk)
                  SELECT $1, g FROM generate_series(0::bigint, $2::bigint - 1) AS g
                  ON CONFLICT DO NOTHING"""
        if count > 0:
            await self._db.run("create chunks", lambda c: c.execute(sql, pipeline, count))

    async def claim(self, pipeline: str, chunk: int, owner: str, ttl: float) -> Claim | None:
        """Lease ``chunk`` to ``owner`` until now + ttl, or None if it is held or done."""
        _base.check_chunk(chunk)
        ttl = _base.check_ttl(ttl)
        now = self.clock()
        expires = now + ttl

        async def claim(conn: asyncpg.Connection) -> Any:
            async with conn.transaction():
                if await self._forbidden(conn, pipeline, chunk, owner, now):
                    return None
                return await conn.fetchval(self._claim, pipeline, chunk, owner, now, expires)

        token = await self._db.run("claim", claim)
        return None if token is None else Claim(pipeline, chunk, owner, int(token), expires)

    async def claim_next(
        self, pipeline: str, owner: str, ttl: float, chunks: range | None = None
    ) -> Claim | None:
        """Claim the lowest available chunk (within ``chunks``), or None if none is available."""
        ttl = _base.check_ttl(ttl)
        low, high = _base.chunk_bounds(chunks)
        now = self.clock()
        expires = now + ttl
        args = (pipeline, now, low, high, 1, owner, expires)

        async def claim_next(conn: asyncpg.Connection) -> Any:
            async with conn.transaction():
                if await self._forbidden(conn, pipeline, 0, owner, now):
                    return None
                return await conn.fetchrow(self._claim_next, *args)

        row = await self._db.run("claim", claim_next)
        return None if row is None else Claim(pipeline, int(row[0]), owner, int(row[1]), expires)

    async def extend(self, claim: Claim, ttl: float) -> Claim:
        """Renew the lease to now + ttl; ClaimLost / ClaimNotFound when it is not ours."""
        ttl = _base.check_ttl(ttl)
        sql = f"""UPDATE {self._table} SET expires_at = $3, renewed_at = $4
                  WHERE pipeline = $1 AND chunk = $2"""

        async def extend(conn: asyncpg.Connection) -> float:
            async with conn.transaction():
                now = await self._check(conn, claim, live=False)
                await conn.execute(sql, claim.pipeline, claim.chunk, now + ttl, now)
            return now + ttl

        expires = await self._db.run("extend a claim", extend)
        return Claim(claim.pipeline, claim.chunk, claim.owner, claim.token, expires)

    async def release(self, claim: Claim, done: bool = False) -> None:
        """Give the lease up (``done``: the chunk is complete); errors as ``extend``."""
        sql = f"""UPDATE {self._table} SET owner = NULL, expires_at = NULL, done = done OR $3
                  WHERE pipeline = $1 AND chunk = $2"""

        async def release(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                await self._check(conn, claim, live=False)
                await conn.execute(sql, claim.pipeline, claim.chunk, done)

        await self._db.run("release a claim", release)

    async def holders(self, pipeline: str) -> list[ChunkState]:
        """The live leases on the pipeline (``WHOLE`` included), in chunk order."""
        sql = f"""SELECT {_STATE} FROM {self._table}
                  WHERE pipeline = $1 AND owner IS NOT NULL AND expires_at > $2 ORDER BY chunk"""
        now = self.clock()
        rows = await self._db.run("list lease holders", lambda c: c.fetch(sql, pipeline, now))
        return [_state(row) for row in rows]

    async def expire(self, pipeline: str, state: ChunkState) -> bool:
        """End ``state``'s lease now if nobody took it since."""
        sql = f"""UPDATE {self._table} SET expires_at = $5
                  WHERE pipeline = $1 AND chunk = $2 AND owner = $3 AND token = $4"""
        args = (pipeline, state.chunk, state.owner, state.token, self.clock())
        status = await self._db.run("end a lease", lambda c: c.execute(sql, *args))
        return status.endswith(" 1")

    async def find_available(
        self, pipeline: str, limit: int, chunks: range | None = None
    ) -> list[int]:
        """Up to ``limit`` claimable chunk rows (within ``chunks``), lowest first, skipping rows
        another transaction has locked."""
        low, high = _base.chunk_bounds(chunks)
        args = (pipeline, self.clock(), low, high, max(limit, 0))
        rows = await self._db.run(
            "find available chunks", lambda c: c.fetch(self._available, *args)
        )
        return [int(row[0]) for row in rows]

    async def save_progress(self, claim: Claim, next_checkpoint: int) -> None:
        """Store the chunk's progress while ``claim`` is a live lease, else ClaimLost."""

        async def save(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                await self._check(conn, claim, live=True)
                await conn.execute(self._set_progress, claim.pipeline, claim.chunk, next_checkpoint)

        await self._db.run("save progress", save)

    async def progress(self, pipeline: str, chunk: int) -> int | None:
        """The chunk's saved next checkpoint, or None."""
        value = await self._db.run(
            "load progress", lambda c: c.fetchval(self._progress, pipeline, chunk)
        )
        return None if value is None else int(value)

    @asynccontextmanager
    async def fenced(
        self, claim: Claim, next_checkpoint: int | None = None, *, recheck: bool = False
    ) -> AsyncIterator[asyncpg.Connection]:
        """Yield a connection in a transaction that holds the chunk's row ``FOR UPDATE`` (a
        concurrent claim waits for it) after checking the lease is live; check it again, save
        ``next_checkpoint`` and commit on a clean exit, roll back if the block raises (see
        ``ClaimStore.fenced``). Errors inside the block propagate unchanged."""
        async with self._db.transaction() as conn:
            try:
                expires_at = await self._lock_bounded(conn, claim)
                if recheck and next_checkpoint is not None:
                    progress = await conn.fetchval(self._progress, claim.pipeline, claim.chunk)
                    AlreadyCommitted.check(claim.pipeline, progress, next_checkpoint)
            except ERRORS as exc:
                raise self._db.error("begin a fenced transaction", exc) from exc
            yield conn
            # The row stays locked by this transaction: only the clock can end the lease.
            _base.check_alive(claim, expires_at, self.clock())
            if next_checkpoint is not None:
                await conn.execute(self._set_progress, claim.pipeline, claim.chunk, next_checkpoint)

    async def adopt_layout(self, pipeline: str, layout: ChunkLayout) -> ChunkLayout:
        """Record ``layout`` unless the pipeline has one; return the recorded one."""
        insert = f"""INSERT INTO {self._layouts} (pipeline, first_checkpoint, chunk_size)
                     VALUES ($1, $2, $3) ON CONFLICT (pipeline) DO NOTHING"""

        async def adopt(conn: asyncpg.Connection) -> Any:
            await conn.execute(insert, pipeline, layout.first, layout.chunk_size)
            return await conn.fetchrow(self._layout_sql, pipeline)

        row = await self._db.run("record the chunk layout", adopt)
        return ChunkLayout(int(row[0]), int(row[1]))

    async def layout(self, pipeline: str) -> ChunkLayout | None:
        """The pipeline's recorded layout, or None."""
        sql = self._layout_sql
        row = await self._db.run("read the chunk layout", lambda c: c.fetchrow(sql, pipeline))
        return None if row is None else ChunkLayout(int(row[0]), int(row[1]))

    async def forget(self, pipeline: str) -> None:
        """Delete the pipeline's layout and chunk rows."""

        async def forget(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                for table in (self._table, self._layouts):
                    await conn.execute(f"DELETE FROM {table} WHERE pipeline = $1", pipeline)

        await self._db.run("forget chunks", forget)

    async def pipelines(self) -> list[str]:
        """Every pipeline with a recorded layout, sorted."""
        sql = f"SELECT pipeline FROM {self._layouts} ORDER BY pipeline"
        return [
            row[0] for row in await self._db.run("list chunked pipelines", lambda c: c.fetch(sql))
        ]

    @property
    def _layout_sql(self) -> str:
        return f"SELECT first_checkpoint, chunk_size FROM {self._layouts} WHERE pipeline = $1"

    async def chunks(self, pipeline: str) -> list[ChunkState]:
        """Every chunk row of the pipeline in chunk order."""
        sql = f"""SELECT {_STATE} FROM {self._table}
                  WHERE pipeline = $1 AND chunk >= 0 ORDER BY chunk"""
        rows = await self._db.run("list chunks", lambda c: c.fetch(sql, pipeline))
        return [_state(row) for row in rows]

    async def completed_prefix(self, pipeline: str) -> int:
        """How many chunks from chunk 0 on are done without a gap."""
        # Done chunks counted while their number equals their rank: the gap-free prefix from 0.
        sql = f"""SELECT count(*) FROM (
                      SELECT chunk, row_number() OVER (ORDER BY chunk) - 1 AS rank
                      FROM {self._table} WHERE pipeline = $1 AND done) AS d
                  WHERE chunk = rank"""
        return int(
            await self._db.run("count completed chunks", lambda c: c.fetchval(sql, pipeline))
        )

    # --- plumbing ------------------------------------------------------------------------------

    async def _lock_bounded(self, conn: asyncpg.Connection, claim: Claim) -> float:
        """Lock the chunk's row, raise unless ``claim``'s lease is live, and have the server
        end this transaction when it stalls past the lease (its holder frozen, its network
        gone), so that its locks go and another process can take the chunk over once the
        lease has run out; in one round trip. Returns when the lease expires."""
        left_ms = str(int(max(1.0, claim.expires_at - self.clock()) * 1000))
        row = await conn.fetchrow(self._row_bounded, claim.pipeline, claim.chunk, left_ms)
        now = self.clock()
        state = None if row is None else (row[0], row[1], row[2], row[3])
        _base.check_holder(claim, state, now, live=True)
        return float(row[2])

    async def _forbidden(
        self, conn: asyncpg.Connection, pipeline: str, chunk: int, owner: str, now: float
    ) -> bool:
        """Whether the one-writer rule forbids ``owner`` to claim ``chunk`` now (in the
        caller's transaction, holding the pipeline's claim lock)."""
        await conn.execute(self._lock_pipeline, pipeline)
        if chunk == _base.WHOLE:
            return bool(await conn.fetchval(self._chunk_held, pipeline, now))
        return bool(await conn.fetchval(self._whole_held, pipeline, now, owner))

    async def _check(self, conn: asyncpg.Connection, claim: Claim, *, live: bool) -> float:
        """Lock the chunk's row and raise unless it is still ``claim``'s lease; returns now."""
        row = await conn.fetchrow(self._row, claim.pipeline, claim.chunk)
        now = self.clock()  # read once the row is locked: no one can change it meanwhile
        _base.check_holder(claim, None if row is None else tuple(row), now, live=live)
        return now

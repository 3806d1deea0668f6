"""A PostgreSQL progress store (asyncpg) that sinks in the same database may share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import asyncpg
import msgspec

from .._dsn import mask_dsn
from .._postgres import SharedPool, create_missing, quote_ident
from ..errors import AlreadyCommitted
from ._base import DeadLetter, Stall
from .leased import DatabaseStore

if TYPE_CHECKING:
    from ..claims import PostgresClaimStore

__all__ = ["PostgresProgressStore"]

_STALL_COLUMNS = (
    "pipeline, checkpoint, attempts, error, location, failing_since, committed_at, reported_at"
)


class PostgresProgressStore(DatabaseStore):
    """Watermarks, dead letters, stalls and pruned-below marks in PostgreSQL, through an
    asyncpg pool.

    Tables are created in ``schema`` when missing. A failure is one ProgressStoreError naming
    the masked DSN; nothing is retried here (the pipeline's committer retries its commits and
    saves). A sink in the same database (compare ``.dsn``) can write its rows and the
    watermark in one transaction. Methods open the store lazily.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "public",
        min_size: int = 1,
        max_size: int = 4,
        application_name: str | None = None,
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        s = quote_ident(schema, "progress store schema")
        self._watermarks = w = f"{s}.indexer_watermarks"
        self._dead_letters = f"{s}.indexer_dead_letters"
        self._stalls = f"{s}.indexer_stalls"
        self._pruned = f"{s}.indexer_pruned"
        self._db = SharedPool(
            dsn,
            what="progress database",
            reentry="progress store called inside its own transaction; "
            "use the connection the transaction yields",
            setup=self._create_tables,
            min_size=min_size,
            max_size=max_size,
            application_name=application_name,
            opener=self.open,
        )
        self._raise = f"""
            INSERT INTO {w} AS t (pipeline, next_checkpoint) VALUES ($1, $2)
            ON CONFLICT (pipeline) DO UPDATE
            SET next_checkpoint = excluded.next_checkpoint, updated_at = now()
            WHERE excluded.next_checkpoint > t.next_checkpoint
            RETURNING t.next_checkpoint"""
        # One statement: the raised value, or (when nothing rose) the one already stored.
        self._save = f"""
            WITH raised AS ({self._raise})
            SELECT next_checkpoint FROM raised
            UNION ALL
            SELECT next_checkpoint FROM {w}
            WHERE pipeline = $1 AND NOT EXISTS (SELECT 1 FROM raised)"""
        self._reset = f"""
            INSERT INTO {w} (pipeline, next_checkpoint) VALUES ($1, $2)
            ON CONFLICT (pipeline) DO UPDATE
            SET next_checkpoint = excluded.next_checkpoint, updated_at = now()"""
        self._load = f"SELECT next_checkpoint FROM {w} WHERE pipeline = $1"
        self._forget_stalls = f"DELETE FROM {self._stalls} WHERE pipeline = $1"
        # A reset lowers the pruned-below mark to the new watermark (written again).
        self._lower_pruned = (
            f"UPDATE {self._pruned} SET below = $2 WHERE pipeline = $1 AND below > $2"
        )

    def __repr__(self) -> str:
        return f"PostgresProgressStore({mask_dsn(self.dsn)!r}, schema={self.schema!r})"

    @property
    def application_name(self) -> str | None:
        """What the store's connections call themselves (``pg_stat_activity``)."""
        return self._db.application_name

    async def open(self) -> None:
        """Create the pool, the schema and the tables; idempotent. Fails fast when the database
        cannot be reached, with a one-line ProgressStoreError naming the masked DSN."""
        await self._db.open()
        await super().open()

    async def _create_tables(self, conn: asyncpg.Connection) -> None:
        watermarks = """pipeline TEXT PRIMARY KEY,
            next_checkpoint BIGINT NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL DEFAULT now()"""
        dead_letters = """pipeline TEXT,
            sequence_number BIGINT,
            error TEXT,
            recorded_at TIMESTAMPTZ DEFAULT now(),
            PRIMARY KEY (pipeline, sequence_number)"""
        # Stalls came after the first release: create_missing adds the table to a database an
        # earlier version made. Times are the writing process's clock (epoch seconds).
        stalls = """pipeline TEXT,
            checkpoint BIGINT,
            attempts BIGINT NOT NULL,
            error TEXT NOT NULL,
            location TEXT NOT NULL,
            failing_since DOUBLE PRECISION NOT NULL,
            committed_at DOUBLE PRECISION NOT NULL,
            reported_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (pipeline, checkpoint)"""
        # Retention's marks came later still, added the same way.
        pruned = """pipeline TEXT PRIMARY KEY,
            below BIGINT NOT NULL,
            pruned_at TIMESTAMPTZ NOT NULL DEFAULT now()"""
        tables = {
            self._watermarks: watermarks,
            self._dead_letters: dead_letters,
            self._stalls: stalls,
            self._pruned: pruned,
        }
        await create_missing(conn, self.schema, tables)

    async def close(self) -> None:
        """Close the pool, after open transactions have ended; idempotent."""
        await self._db.close()
        await super().close()

    async def load(self, pipeline: str) -> int | None:
        """The pipeline's watermark, or None when it has never saved one."""
        value = await self._db.run("load", lambda c: c.fetchval(self._load, pipeline))
        return None if value is None else int(value)

    async def save(self, pipeline: str, watermark: int) -> int:
        """Raise the watermark with one rise-only upsert; returns the value now stored."""

        async def save(conn: asyncpg.Connection) -> Any:
            value = await conn.fetchval(self._save, pipeline, watermark)
            if value is None:  # a concurrent insert our snapshot could not see
                value = await conn.fetchval(self._load, pipeline)
            return value

        return int(await self._db.run("save", save))

    async def reset(self, pipeline: str, watermark: int) -> None:
        """Set the watermark to any value, lower included, forget the pipeline's stalls and
        lower its pruned-below mark to the watermark."""

        async def reset(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                await self._resetting(conn, pipeline, watermark)

        await self._db.run("reset", reset)

    async def drop(self, pipeline: str) -> None:
        """Delete the pipeline's watermark, dead letters, stalls and pruned-below mark."""
        tables = (self._watermarks, self._dead_letters, self._stalls, self._pruned)

        async def drop(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                for table in tables:
                    await conn.execute(f"DELETE FROM {table} WHERE pipeline = $1", pipeline)

        await self._db.run("drop a pipeline", drop)

    @asynccontextmanager
    async def rewind(self, pipeline: str, watermark: int) -> AsyncIterator[asyncpg.Connection]:
        """Yield a connection inside a transaction; set the watermark (lower included) and
        commit on a clean exit, roll everything back if the block raises."""
        async with self._db.transaction() as conn:
            yield conn
            await self._resetting(conn, pipeline, watermark)

    async def _resetting(self, conn: asyncpg.Connection, pipeline: str, watermark: int) -> None:
        """What a reset writes: the watermark, no stalls, the pruned-below mark no higher."""
        await conn.execute(self._reset, pipeline, watermark)
        await conn.execute(self._forget_stalls, pipeline)
        await conn.execute(self._lower_pruned, pipeline, watermark)

    @asynccontextmanager
    async def write_transaction(self, action: str) -> AsyncIterator[asyncpg.Connection]:
        """Yield a pooled connection inside a transaction; commit on a clean exit, roll back
        if the block raises (errors propagate unchanged: the caller retries)."""
        async with self._db.transaction() as conn:
            yield conn

    async def watermarks(self) -> dict[str, int]:
        """Every pipeline's watermark."""
        sql = f"SELECT pipeline, next_checkpoint FROM {self._watermarks}"
        rows = await self._db.run("load", lambda c: c.fetch(sql))
        return {row[0]: int(row[1]) for row in rows}

    async def add_dead_letter(self, pipeline: str, sequence_number: int, error: str) -> None:
        """Record a skipped checkpoint (replacing an earlier record of it)."""
        sql = f"""
            INSERT INTO {self._dead_letters} (pipeline, sequence_number, error) VALUES ($1, $2, $3)
            ON CONFLICT (pipeline, sequence_number) DO UPDATE
            SET error = excluded.error, recorded_at = now()"""
        await self._db.run(
            "save a dead letter", lambda c: c.execute(sql, pipeline, sequence_number, error)
        )

    async def dead_letters(self, pipeline: str | None = None) -> list[DeadLetter]:
        """Dead letters of one pipeline or all, sorted by sequence number then pipeline."""
        sql = (
            "SELECT pipeline, sequence_number, error, extract(epoch FROM recorded_at)::float8"
            f" FROM {self._dead_letters} WHERE $1::text IS NULL OR pipeline = $1"
            " ORDER BY sequence_number, pipeline"
        )
        rows = await self._db.run("load dead letters", lambda c: c.fetch(sql, pipeline))
        return [DeadLetter(p, int(s), e or "", float(r or 0.0)) for p, s, e, r in rows]

    async def report_stall(self, stall: Stall) -> None:
        """Record a stall (replacing an earlier record of its checkpoint)."""
        sql = f"""
            INSERT INTO {self._stalls} AS t ({_STALL_COLUMNS})
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            ON CONFLICT (pipeline, checkpoint) DO UPDATE
            SET attempts = excluded.attempts, error = excluded.error,
                location = excluded.location, failing_since = excluded.failing_since,
                committed_at = excluded.committed_at, reported_at = excluded.reported_at"""
        values = msgspec.structs.astuple(stall)
        await self._db.run("record a stall", lambda c: c.execute(sql, *values))

    async def clear_stall(self, pipeline: str, checkpoint: int) -> None:
        """Forget the stall of ``pipeline`` at ``checkpoint``."""
        sql = f"DELETE FROM {self._stalls} WHERE pipeline = $1 AND checkpoint = $2"
        await self._db.run("clear a stall", lambda c: c.execute(sql, pipeline, checkpoint))

    async def stalls(self, pipeline: str | None = None) -> list[Stall]:
        """Stalls of one pipeline or all, sorted by checkpoint then pipeline."""
        sql = (
            f"SELECT {_STALL_COLUMNS} FROM {self._stalls}"
            " WHERE $1::text IS NULL OR pipeline = $1 ORDER BY checkpoint, pipeline"
        )
        rows = await self._db.run("load stalls", lambda c: c.fetch(sql, pipeline))
        return [Stall(*row) for row in rows]

    async def record_pruned(self, pipeline: str, below: int) -> None:
        """Raise the pipeline's pruned-below mark (rise-only)."""
        sql = f"""
            INSERT INTO {self._pruned} AS t (pipeline, below) VALUES ($1, $2)
            ON CONFLICT (pipeline) DO UPDATE SET below = excluded.below, pruned_at = now()
            WHERE excluded.below > t.below"""
        await self._db.run("record a pruned mark", lambda c: c.execute(sql, pipeline, below))

    async def pruned_below(self, pipeline: str) -> int | None:
        """The pipeline's pruned-below mark, or None."""
        sql = f"SELECT below FROM {self._pruned} WHERE pipeline = $1"
        value = await self._db.run("load a pruned mark", lambda c: c.fetchval(sql, pipeline))
        return None if value is None else int(value)

    def claim_store(self) -> PostgresClaimStore:
        """The claim store in this store's database and schema."""
        from ..claims import PostgresClaimStore

        return PostgresClaimStore(
            self.dsn, schema=self.schema, application_name=self.application_name
        )

    async def watermark_in(self, connection: asyncpg.Connection, pipeline: str) -> int | None:
        """The stored watermark, read (and locked) in ``connection``'s transaction."""
        value = await connection.fetchval(self._load + " FOR UPDATE", pipeline)
        return None if value is None else int(value)

    async def raise_watermark(
        self, connection: asyncpg.Connection, pipeline: str, watermark: int
    ) -> int:
        """Raise the watermark (rise-only) in ``connection``'s open transaction; returns the
        value now stored."""
        return int(await connection.fetchval(self._save, pipeline, watermark))

    @asynccontextmanager
    async def transaction(
        self, pipeline: str, watermark: int, *, recheck: bool = False
    ) -> AsyncIterator[asyncpg.Connection]:
        """Yield a connection inside a transaction; commit rows and watermark together.

        On a clean exit the watermark is raised (rise-only) in the same transaction and it
        commits; if the block raises, everything rolls back and the error propagates unchanged.
        Connection errors are not retried here: the caller retries the whole batch.
        """
        async with self._db.transaction() as conn:
            if recheck:  # the row lock waits for an earlier attempt still ending on the server
                stored = await self.watermark_in(conn, pipeline)
                AlreadyCommitted.check(pipeline, stored, watermark)
            yield conn
            await conn.execute(self._raise, pipeline, watermark)

"""The claim stores (SQLite and PostgreSQL) against one contract: leases, fencing, completion."""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from indexer.claims import (
    WHOLE,
    ChunkLayout,
    ChunkState,
    Claim,
    ClaimLost,
    ClaimNotFound,
    ClaimStore,
    PostgresClaimStore,
    SqliteClaimStore,
)
from indexer.claims._base import describe
from indexer.errors import AlreadyCommitted, IndexerError, ProgressStoreError

ROOT = Path(__file__).resolve().parent.parent
START = 1000.0


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Backend:
    """Makes stores of one kind on one database, closes them after the test, and reads and
    writes a sink table in that database for the fenced-transaction tests."""

    def __init__(self, kind: str, tmp_path: Path, dsn: str = "", schema: str = "") -> None:
        self.kind = kind
        self.path = tmp_path / "claims.db"
        self.dsn = dsn
        self.schema = schema
        self.sink = f'"{schema}".sink' if schema else "sink"
        self.stores: list[ClaimStore] = []

    def make(self, clock: Callable[[], float] = time.time) -> ClaimStore:
        store: ClaimStore
        if self.kind == "sqlite":
            store = SqliteClaimStore(self.path, clock=clock)
        else:
            store = PostgresClaimStore(self.dsn, schema=self.schema, clock=clock)
        self.stores.append(store)
        return store

    async def close(self) -> None:
        for store in self.stores:
            await store.close()

    async def write(self, conn: Any, value: int) -> None:
        """Insert a sink row through a fenced transaction's connection."""
        if self.kind == "sqlite":
            await conn.execute(f"INSERT INTO {self.sink} (value) VALUES (?)", (value,))
        else:
            await conn.execute(f"INSERT INTO {self.sink} (value) VALUES ($1)", value)

    async def sql(self, statement: str) -> list[Any]:
        """Run one statement on a connection of the test's own."""
        if self.kind == "sqlite":
            with sqlite3.connect(self.path) as conn:
                rows = conn.execute(statement).fetchall()
            conn.close()
            return rows
        pg = await asyncpg.connect(self.dsn)
        try:
            return [tuple(r) for r in await pg.fetch(statement)]
        finally:
            await pg.close()


@pytest.fixture(params=["sqlite", "postgres"])
def kind(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each backend in turn (a sync fixture, so it may pull in the async ``pg_schema``)."""
    if request.param == "sqlite":
        return Backend("sqlite", tmp_path)
    dsn = request.getfixturevalue("postgres_dsn")
    return Backend("postgres", tmp_path, dsn, request.getfixturevalue("pg_schema"))


@pytest.fixture
async def backend(kind: Backend) -> AsyncIterator[Backend]:
    """The backend, closing every store it made after the test."""
    try:
        yield kind
    finally:
        await kind.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(backend: Backend, clock: FakeClock) -> ClaimStore:
    return backend.make(clock)


# --- claim, renew, expiry ----------------------------------------------------------------------


async def test_claim_is_exclusive_and_renewing_keeps_the_token(
    store: ClaimStore, clock: FakeClock
) -> None:
    a = await store.claim("p", 0, "a", ttl=10)
    assert a == Claim("p", 0, "a", 1, START + 10)
    assert await store.claim("p", 0, "b", ttl=10) is None
    clock.now += 5
    again = await store.claim("p", 0, "a", ttl=10)
    assert again == Claim("p", 0, "a", 1, START + 15)  # renewed, same token
    assert await store.claim("p", 1, "b", ttl=10) == Claim("p", 1, "b", 1, START + 15)
    await store.release(again)
    taken = await store.claim("p", 0, "b", ttl=10)  # claimed anew after a release
    assert taken is not None and taken.owner == "b" and taken.token == 2
    assert await store.claim("other", 0, "a", ttl=10) is not None  # pipelines are separate


async def test_expiry_boundary_counts_as_expired(store: ClaimStore, clock: FakeClock) -> None:
    a = await store.claim("p", 0, "a", ttl=10)
    assert a is not None and a.expires_at == START + 10
    clock.now = math.nextafter(a.expires_at, 0)  # the last instant the lease is live
    assert await store.claim("p", 0, "b", ttl=10) is None
    assert 0 not in await store.find_available("p", 10)
    await store.save_progress(a, 5)  # still live: accepted
    clock.now = a.expires_at
    assert await store.find_available("p", 10) == [0]
    with pytest.raises(ClaimLost):
        await store.save_progress(a, 6)  # expired: refused even though nobody took it yet
    b = await store.claim("p", 0, "b", ttl=10)
    assert b == Claim("p", 0, "b", 2, a.expires_at + 10)
    assert await store.progress("p", 0) == 5


async def test_own_expired_lease_is_claimed_anew_with_a_new_token(
    store: ClaimStore, clock: FakeClock
) -> None:
    a = await store.claim("p", 0, "a", ttl=10)
    assert a is not None
    clock.now += 10
    a2 = await store.claim("p", 0, "a", ttl=10)
    assert a2 is not None and a2.token == 2
    with pytest.raises(ClaimLost):
        await store.extend(a, 10)  # the old handle is fenced off


async def test_extend_is_absolute_now_plus_ttl(store: ClaimStore, clock: FakeClock) -> None:
    a = await store.claim("p", 0, "a", ttl=10)
    assert a is not None
    clock.now = START + 4
    extended = await store.extend(a, 300)
    assert extended == Claim("p", 0, "a", 1, START + 304)  # not START + 10 + 300
    [state] = await store.chunks("p")
    assert state.expires_at == START + 304
    clock.now = math.nextafter(START + 304, 0)
    assert await store.claim("p", 0, "b", ttl=10) is None
    clock.now = START + 304
    assert await store.claim("p", 0, "b", ttl=10) is not None


async def test_extend_revives_an_expired_lease_nobody_took(
    store: ClaimStore, clock: FakeClock
) -> None:
    a = await store.claim("p", 0, "a", ttl=10)
    assert a is not None
    clock.now += 20
    revived = await store.extend(a, 10)
    assert revived.token == a.token and revived.expires_at == clock.now + 10
    assert await store.claim("p", 0, "b", ttl=10) is None
    await store.save_progress(revived, 3)


async def test_claim_lost_and_not_found(store: ClaimStore, clock: FakeClock) -> None:
    ghost = Claim("p", 7, "a", 1, START + 10)
    with pytest.raises(ClaimNotFound):
        await store.extend(ghost, 10)
    with pytest.raises(ClaimNotFound):
        await store.release(ghost)
    with pytest.raises(ClaimNotFound):
        await store.save_progress(ghost, 1)

    a = await store.claim("p", 0, "a", ttl=10)
    assert a is not None
    impostor = Claim("p", 0, "b", a.token, a.expires_at)
    for attempt in (store.extend(impostor, 10), store.release(impostor)):
        with pytest.raises(ClaimLost):
            await attempt
    await store.release(a)
    with pytest.raises(ClaimNotFound):
        await store.release(a)  # released twice
    with pytest.raises(ClaimNotFound):
        await store.extend(a, 10)

    b = await store.claim("p", 0, "b", ttl=10)
    assert b is not None and b.token == 2
    with pytest.raises(ClaimLost):
        await store.extend(a, 10)  # another owner claimed it since
    clock.now += 10
    b2 = await store.claim("p", 0, "c", ttl=10)
    assert b2 is not None and b2.token == 3
    for attempt in (store.extend(b, 10), store.release(b, done=True)):
        with pytest.raises(ClaimLost):  # expired and taken
            await attempt
    assert not (await store.chunks("p"))[0].done
    assert issubclass(ClaimLost, IndexerError) and issubclass(ClaimNotFound, IndexerError)


# --- one writer per pipeline --------------------------------------------------------------------


async def test_the_whole_pipeline_and_its_chunks_are_never_held_together(
    store: ClaimStore, clock: FakeClock
) -> None:
    whole = await store.claim("p", WHOLE, "run-a", ttl=10)
    assert whole == Claim("p", WHOLE, "run-a", 1, START + 10)
    assert await store.claim("p", WHOLE, "run-b", ttl=10) is None  # one writer
    await store.ensure_chunks("p", 3)
    assert await store.claim("p", 0, "job-1", ttl=10) is None  # no chunk while it is held
    assert await store.claim_next("p", "job-1", ttl=10) is None
    assert await store.claim("q", 0, "job-1", ttl=10) is not None  # another pipeline
    assert [s.chunk for s in await store.chunks("p")] == [0, 1, 2]  # WHOLE is no chunk
    clock.now += 10  # the writer's lease ran out: a chunked job may start
    chunk = await store.claim_next("p", "job-1", ttl=10)
    assert chunk is not None and chunk.chunk == 0
    assert await store.claim("p", WHOLE, "run-b", ttl=10) is None  # not while a chunk is held
    await store.release(chunk)
    again = await store.claim("p", WHOLE, "run-b", ttl=10)
    assert again is not None and again.token == 2


async def test_holders_say_who_holds_since_when_and_expire_ends_a_dead_holder(
    store: ClaimStore, clock: FakeClock
) -> None:
    await store.claim("p", WHOLE, "host:1", ttl=10)
    clock.now += 4
    await store.claim("p", WHOLE, "host:1", ttl=10)  # renewed by claiming again
    clock.now += 2
    (held,) = await store.holders("p")
    assert (held.chunk, held.owner, held.token) == (WHOLE, "host:1", 1)
    assert (held.claimed_at, held.renewed_at, held.expires_at) == (START, START + 4, START + 14)
    assert describe(held, clock.now).startswith("host:1 since ")
    assert describe(held, clock.now).endswith("(lease renewed 2 s ago)")
    stale = ChunkState(WHOLE, "host:1", 0, None, False, None)
    assert not await store.expire("p", stale)  # another token: nothing ended
    assert await store.expire("p", held)
    assert await store.holders("p") == []
    taken = await store.claim("p", WHOLE, "host:2", ttl=10)
    assert taken is not None and taken.token == 2
    (now_held,) = await store.holders("p")
    assert now_held.claimed_at == clock.now


async def test_bad_arguments_are_refused(store: ClaimStore) -> None:
    for bad_ttl in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="ttl"):
            await store.claim("p", 0, "a", ttl=bad_ttl)
    with pytest.raises(ValueError, match="chunk"):
        await store.claim("p", -2, "a", ttl=1)
    with pytest.raises(ValueError, match="step 1"):
        await store.find_available("p", 5, chunks=range(0, 10, 2))


# --- fencing -----------------------------------------------------------------------------------


async def test_late_save_of_a_lost_lease_is_refused(store: ClaimStore, clock: FakeClock) -> None:
    a = await store.claim("p", 0, "a", ttl=10)
    assert a is not None
    await store.save_progress(a, 100)
    clock.now += 10  # A stalls past its lease
    b = await store.claim("p", 0, "b", ttl=10)
    assert b is not None and b.token == a.token + 1
    assert await store.progress("p", 0) == 100  # B resumes from A's saved progress
    await store.save_progress(b, 150)
    with pytest.raises(ClaimLost):
        await store.save_progress(a, 999)
    with pytest.raises(ClaimLost):
        async with store.fenced(a, next_checkpoint=999):
            raise AssertionError("the block must not run for a lost lease")
    assert await store.progress("p", 0) == 150
    await store.release(b, done=True)
    with pytest.raises(ClaimNotFound):
        await store.save_progress(b, 200)  # released: no lease at all
    assert await store.progress("p", 0) == 150


async def sink_and_lease(backend: Backend, store: ClaimStore) -> Claim:
    """A sink table beside the claims, and owner ``a``'s 10 s lease on chunk 0 of ``p``."""
    await store.open()
    await backend.sql(f"CREATE TABLE {backend.sink} (value INTEGER)")
    lease = await store.claim("p", 0, "a", ttl=10)
    assert lease is not None
    return lease


async def test_fenced_transaction_commits_sink_rows_with_progress(
    backend: Backend, store: ClaimStore, clock: FakeClock
) -> None:
    a = await sink_and_lease(backend, store)
    async with store.fenced(a, next_checkpoint=20) as conn:
        await backend.write(conn, 1)
        with pytest.raises(ProgressStoreError, match="inside its own fenced transaction"):
            await store.save_progress(a, 5)  # would wait on its own lock
    assert await store.progress("p", 0) == 20
    with pytest.raises(RuntimeError, match="sink failed"):
        async with store.fenced(a, next_checkpoint=30) as conn:
            await backend.write(conn, 2)
            raise RuntimeError("sink failed")
    assert await store.progress("p", 0) == 20  # rolled back with the row
    clock.now += 10
    assert await store.claim("p", 0, "b", ttl=10) is not None
    with pytest.raises(ClaimLost):
        async with store.fenced(a, next_checkpoint=40) as conn:
            await backend.write(conn, 3)
    assert await backend.sql(f"SELECT value FROM {backend.sink}") == [(1,)]
    assert await store.progress("p", 0) == 20


async def test_a_holder_whose_lease_runs_out_inside_its_fenced_transaction_commits_nothing(
    backend: Backend, store: ClaimStore, clock: FakeClock
) -> None:
    a = await sink_and_lease(backend, store)
    with pytest.raises(ClaimLost, match="ran out during its commit"):
        async with store.fenced(a, next_checkpoint=20) as conn:
            await backend.write(conn, 1)
            clock.now += 10  # frozen past the lease, inside the transaction
    assert await backend.sql(f"SELECT value FROM {backend.sink}") == []
    assert await store.progress("p", 0) is None


async def test_a_retry_finds_a_commit_done_already(
    backend: Backend, store: ClaimStore, clock: FakeClock
) -> None:
    await store.open()
    a = await store.claim("p", 0, "a", ttl=10)
    assert a is not None
    async with store.fenced(a, next_checkpoint=20):
        pass
    with pytest.raises(AlreadyCommitted, match="committed already"):
        async with store.fenced(a, next_checkpoint=20, recheck=True):
            pytest.fail("the block of a commit done already must not run")
    async with store.fenced(a, next_checkpoint=30, recheck=True):
        pass  # not covered yet: the retry writes
    assert await store.progress("p", 0) == 30


# --- availability and completion ---------------------------------------------------------------


async def test_done_chunks_are_not_available_and_prefix_counts_them(
    store: ClaimStore, clock: FakeClock
) -> None:
    assert await store.find_available("p", 10) == []  # no rows yet
    assert await store.completed_prefix("p") == 0
    await store.ensure_chunks("p", 5)
    await store.ensure_chunks("p", 3)  # idempotent, never shrinks
    assert await store.find_available("p", 10) == [0, 1, 2, 3, 4]
    assert await store.find_available("p", 2) == [0, 1]
    assert await store.find_available("p", 10, chunks=range(2, 4)) == [2, 3]
    for chunk in (0, 1, 3):
        c = await store.claim("p", chunk, "a", ttl=10)
        assert c is not None
        await store.save_progress(c, chunk * 10 + 9)
        await store.release(c, done=True)
    held = await store.claim("p", 2, "b", ttl=10)
    assert held is not None
    assert await store.find_available("p", 10) == [4]
    assert await store.claim("p", 0, "c", ttl=10) is None  # done forever
    assert await store.completed_prefix("p") == 2
    await store.ensure_chunks("p", 5)  # leaves claimed and done rows as they are
    claimed = (START, START)  # claimed_at, renewed_at
    assert await store.chunks("p") == [
        ChunkState(0, None, 1, None, True, 9, *claimed),
        ChunkState(1, None, 1, None, True, 19, *claimed),
        ChunkState(2, "b", 1, START + 10, False, None, *claimed),
        ChunkState(3, None, 1, None, True, 39, *claimed),
        ChunkState(4, None, 0, None, False, None),
    ]
    assert (await store.chunks("p"))[2].held(START + 9)
    await store.release(held, done=True)
    assert await store.completed_prefix("p") == 4
    c7 = await store.claim("p", 7, "a", ttl=10)  # a row beyond a gap (5, 6 missing)
    assert c7 is not None
    await store.release(c7, done=True)
    assert await store.completed_prefix("p") == 4
    assert await store.completed_prefix("other") == 0


async def test_claim_next_takes_the_lowest_available_chunk(
    store: ClaimStore, clock: FakeClock
) -> None:
    assert await store.claim_next("p", "a", ttl=10) is None
    await store.ensure_chunks("p", 4)
    first = await store.claim("p", 0, "x", ttl=5)
    assert first is not None
    got = await store.claim_next("p", "a", ttl=10)
    assert got == Claim("p", 1, "a", 1, START + 10)
    assert await store.claim_next("p", "a", ttl=10, chunks=range(3, 4)) == Claim(
        "p", 3, "a", 1, START + 10
    )
    clock.now += 5  # x's lease on 0 expires
    taken = await store.claim_next("p", "b", ttl=10)
    assert taken == Claim("p", 0, "b", 2, START + 15)
    assert (await store.claim_next("p", "b", ttl=10)) == Claim("p", 2, "b", 1, START + 15)
    assert await store.claim_next("p", "b", ttl=10) is None


# --- layout and forget -------------------------------------------------------------------------


async def test_layout_is_recorded_once_and_forget_drops_it_with_the_chunks(
    store: ClaimStore,
) -> None:
    assert await store.layout("p") is None
    assert await store.pipelines() == []
    assert await store.adopt_layout("p", ChunkLayout(100, 10)) == ChunkLayout(100, 10)
    assert await store.adopt_layout("p", ChunkLayout(0, 50)) == ChunkLayout(100, 10)  # first wins
    assert await store.adopt_layout("q", ChunkLayout(0, 50)) == ChunkLayout(0, 50)
    assert await store.layout("p") == ChunkLayout(100, 10)
    assert await store.pipelines() == ["p", "q"]
    assert ChunkLayout(100, 10).bounds(2) == (120, 129)
    assert ChunkLayout(100, 10).chunk_of(129) == 2
    await store.ensure_chunks("p", 3)
    await store.ensure_chunks("q", 2)
    claim = await store.claim("p", 0, "a", ttl=10)
    assert claim is not None
    await store.release(claim, done=True)
    await store.forget("p")
    assert await store.layout("p") is None
    assert await store.chunks("p") == []
    assert await store.completed_prefix("p") == 0
    assert await store.pipelines() == ["q"]
    assert len(await store.chunks("q")) == 2  # other pipelines are untouched


# --- concurrency -------------------------------------------------------------------------------


async def test_concurrent_claimers_never_both_win(backend: Backend) -> None:
    stores = [backend.make() for _ in range(5)]  # separate connections: real races
    await asyncio.gather(*(s.open() for s in stores))

    async def race(chunk: int) -> list[Claim]:
        claims = await asyncio.gather(
            *(stores[i % 5].claim("p", chunk, f"w{i}", ttl=60) for i in range(20))
        )
        return [c for c in claims if c is not None]

    assert len(await race(0)) == 1  # no row yet: the insert path
    await stores[0].ensure_chunks("p", 2)
    [won] = await race(1)  # an unclaimed row: the update path
    assert won.token == 1
    await stores[0].release(won)
    [again] = await race(1)  # a released row
    assert again.token == 2

    await stores[0].ensure_chunks("p", 30)

    async def drain(i: int) -> list[int]:
        got = []
        while (c := await stores[i % 5].claim_next("p", f"n{i}", ttl=60)) is not None:
            got.append(c.chunk)
        return got

    taken = [chunk for got in await asyncio.gather(*(drain(i) for i in range(20))) for chunk in got]
    assert sorted(taken) == list(range(2, 30))  # each free chunk exactly once


_CHILD = textwrap.dedent("""
    import asyncio, json, os, sys, time
    from indexer.claims import SqliteClaimStore

    async def main(path, name, ready, go):
        async with SqliteClaimStore(path) as store:
            await store.find_available("p", 1)  # connected and the table exists
            open(ready, "w").close()
            deadline = time.monotonic() + 30
            while not os.path.exists(go) and time.monotonic() < deadline:
                await asyncio.sleep(0.001)
            won = [c for c in range(50) if await store.claim("p", c, name, ttl=600)]
        print(json.dumps(won))

    asyncio.run(main(*sys.argv[1:]))
""")


def test_processes_racing_on_one_sqlite_file_claim_each_chunk_once(tmp_path: Path) -> None:
    path = tmp_path / "claims.db"
    procs = []
    for i in range(4):
        args = [str(path), f"proc{i}", str(tmp_path / f"ready{i}"), str(tmp_path / "go")]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _CHILD, *args],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"ready{i}").exists() for i in range(4)):
            assert all(p.poll() is None for p in procs), "a child process died early"
            assert time.monotonic() < deadline, "children did not get ready"
            time.sleep(0.005)
        (tmp_path / "go").touch()
        outputs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    won = [json.loads(out) for out, _err in outputs]
    every = [chunk for chunks in won for chunk in chunks]
    assert sorted(every) == list(range(50)), won  # each chunk claimed by exactly one
    with sqlite3.connect(path) as conn:
        tokens = conn.execute("SELECT DISTINCT token FROM indexer_claims").fetchall()
    conn.close()
    assert tokens == [(1,)]


# --- opening -----------------------------------------------------------------------------------


async def test_unreachable_postgres_is_one_line_naming_the_masked_dsn() -> None:
    store = PostgresClaimStore("postgresql://user:secret@127.0.0.1:1/db")
    with pytest.raises(ProgressStoreError) as info:
        await store.claim("p", 0, "a", ttl=1)
    message = str(info.value)
    assert "\n" not in message and "secret" not in message
    assert message.startswith("postgresql://user:***@127.0.0.1:1/db: cannot open claim database")
    await store.close()


async def test_a_claims_table_of_an_earlier_version_gains_the_new_columns(
    backend: Backend,
) -> None:
    """A table made before claimed_at and renewed_at existed keeps its rows and gains them."""
    table = f'"{backend.schema}".indexer_claims' if backend.schema else "indexer_claims"
    if backend.kind == "postgres":
        await backend.sql(f'CREATE SCHEMA IF NOT EXISTS "{backend.schema}"')
    await backend.sql(
        f"CREATE TABLE {table} (pipeline TEXT NOT NULL, chunk BIGINT NOT NULL, owner TEXT,"
        " token BIGINT NOT NULL DEFAULT 0, expires_at DOUBLE PRECISION,"
        " done BOOLEAN NOT NULL DEFAULT false, progress BIGINT, PRIMARY KEY (pipeline, chunk))"
    )
    await backend.sql(
        f"INSERT INTO {table} (pipeline, chunk, token, done) VALUES ('p', 0, 3, true)"
    )
    store = backend.make()
    assert [(s.chunk, s.token, s.done) for s in await store.chunks("p")] == [(0, 3, True)]
    claim = await store.claim("p", 1, "a", ttl=10)
    assert claim is not None
    (held,) = await store.holders("p")
    assert held.claimed_at is not None and held.claimed_at == held.renewed_at


async def test_unusable_sqlite_path_is_a_progress_store_error(tmp_path: Path) -> None:
    store = SqliteClaimStore(tmp_path)  # a directory
    with pytest.raises(ProgressStoreError, match="cannot open claim database"):
        await store.claim("p", 0, "a", ttl=1)
    await store.close()


async def test_failed_lease_renewals_are_counted_and_a_recovered_lease_is_kept(
    tmp_path: Path,
) -> None:
    """``keep_alive`` tells of every renewal that failed (``indexer_lease_renewal_failures_total``)
    and keeps the lease when a renewal then succeeds."""
    from indexer.claims.lease import keep_alive

    class Flaky(SqliteClaimStore):
        calls = 0

        async def extend(self, claim: Claim, ttl: float) -> Claim:
            Flaky.calls += 1
            if Flaky.calls <= 2:
                raise OSError("the database is away")
            return await super().extend(claim, ttl)

    async with Flaky(tmp_path / "claims.db") as store:
        await store.ensure_chunks("p", 1)
        claim = await store.claim("p", 0, "me", ttl=2.0)
        assert claim is not None
        failures: list[int] = []
        lost: list[str] = []
        task = asyncio.create_task(
            keep_alive(store, claim, 2.0, lost.append, on_failure=lambda: failures.append(1))
        )
        while Flaky.calls < 4:  # two failures, then two renewals
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(failures) == 2 and lost == []

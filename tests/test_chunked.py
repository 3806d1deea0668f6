"""ChunkedRunner in-process: layout, ranges cut short by ``last``, renewal failures, fencing.

The claims, the progress and the sink's rows share one SQLite file, so every batch commits in
the lease-fenced transaction: the rows say exactly which checkpoints were committed, by whom.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from indexer import ConfigurationError, Worker
from indexer.chunked import ChunkedRunner
from indexer.claims import Claim, SqliteClaimStore
from indexer.errors import ProgressStoreError, StoreBusy
from indexer.pipeline import WorkerPool
from indexer.progress import SqliteProgressStore
from indexer.sources import MemorySource
from indexer.stats import JobView
from indexer.testing import make_checkpoints
from reducers import SqliteSink

CHECKPOINTS = make_checkpoints(120)
Hook = Callable[[int], Awaitable[None]]


class Marker(Worker[Any, list[tuple[int, str]]]):
    """One row per checkpoint, ``(sequence_number, who)``; an optional hook runs first."""

    name = "marks"

    def __init__(self, who: str, delay: float = 0.0, hook: Hook | None = None) -> None:
        self.who = who
        self.delay = delay
        self.hook = hook

    async def process_checkpoint(self, checkpoint: Any) -> list[tuple[int, str]]:
        if self.hook is not None:
            await self.hook(checkpoint.sequence_number)
        if self.delay:
            await asyncio.sleep(self.delay)
        return [(checkpoint.sequence_number, self.who)]


def runner(
    db: Path,
    worker: Marker,
    *,
    chunk_size: int = 50,
    lease_ttl: float = 30.0,
    claims: SqliteClaimStore | None = None,
    job: JobView | None = None,
) -> ChunkedRunner:
    sink = SqliteSink(
        "marks", {"checkpoint": "INTEGER", "who": "TEXT"}, max_batch_size=5, max_batch_age=0.01
    )
    pool = WorkerPool(worker, concurrency=2, reducer=sink)
    return ChunkedRunner(
        SqliteProgressStore(db),
        claims or SqliteClaimStore(db),
        [pool],
        lambda: MemorySource(CHECKPOINTS),
        chunk_size=chunk_size,
        lease_ttl=lease_ttl,
        owner=worker.who,
        poll_interval=0.01,
        handle_signals=False,
        job=job,
    )


def rows(db: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(db) as conn:
        found = sorted(conn.execute("SELECT checkpoint, who FROM marks").fetchall())
    conn.close()
    return found


async def test_a_job_runs_chunk_by_chunk_exactly_once(tmp_path: Path) -> None:
    db = tmp_path / "job.db"
    job = runner(db, Marker("a"), chunk_size=25)
    assert await job.run(last=119) == {"marks": 120}
    assert rows(db) == [(n, "a") for n in range(120)]
    # The last chunk (100..124) is cut at 119 by ``last``: run, but not done for good.
    assert (job.chunks_done, job.chunks_abandoned) == (4, 0)


async def test_every_chunk_reports_into_one_feed_stats(tmp_path: Path) -> None:
    """The metrics endpoint reads the JobView handed in: each chunk's reads land in its feed
    stats, and the feed's newest checkpoint is polled once for the run, not once per chunk."""
    view = JobView()
    job = runner(tmp_path / "job.db", Marker("a"), chunk_size=25, job=view)
    stats = view.feed
    source = MemorySource(CHECKPOINTS)
    polls = 0
    original = source.latest_sequence_number

    async def counted() -> int | None:
        nonlocal polls
        polls += 1
        return await original()

    source.latest_sequence_number = counted  # type: ignore[method-assign]
    job.source_factory = lambda: source
    assert await job.run(last=119) == {"marks": 120}
    assert stats.latest == 119
    assert stats.last_read == 119
    assert stats.bytes_read == sum(source._sizes)
    assert polls == 1
    # Every chunk's run counted into the one view of the pipeline, which shows where it ended.
    marks = view.pipelines["marks"]
    assert (marks.stats.processed, marks.watermark, marks.run) == (120, 120, None)


async def test_the_layout_is_fixed_once_recorded(tmp_path: Path) -> None:
    db = tmp_path / "job.db"
    assert await runner(db, Marker("a"), chunk_size=50).run(last=59) == {"marks": 60}
    with pytest.raises(ConfigurationError, match=r"chunks of 50 from checkpoint 0.*chunks of 20"):
        await runner(db, Marker("a"), chunk_size=20).run(last=119)
    with pytest.raises(ConfigurationError, match=r"from checkpoint 0 .* from 10"):
        await runner(db, Marker("a"), chunk_size=50).run(first=10, last=119)
    assert rows(db) == [(n, "a") for n in range(60)]  # the refused runs wrote nothing


async def test_a_higher_last_goes_on_inside_the_chunk_cut_short(tmp_path: Path) -> None:
    """Chunk 1 (50..99) is cut at 59 by the first run; the second run must still do 60..99."""
    db = tmp_path / "job.db"
    assert await runner(db, Marker("a")).run(last=59) == {"marks": 60}
    assert await runner(db, Marker("b")).run(last=119) == {"marks": 120}
    assert rows(db) == [(n, "a") for n in range(60)] + [(n, "b") for n in range(60, 120)]
    async with SqliteClaimStore(db) as claims:
        chunks = await claims.chunks("marks")
    assert [(c.done, c.progress) for c in chunks] == [(True, 50), (True, 100), (False, 120)]


class FlakyRenewals(SqliteClaimStore):
    """Fails the first ``failures`` lease renewals with ``error``: by default as an unreachable
    database would."""

    def __init__(
        self, path: Path, failures: int, error: type[Exception] = ProgressStoreError
    ) -> None:
        super().__init__(path)
        self.failures = failures
        self.error = error
        self.renewals = 0

    async def extend(self, claim: Claim, ttl: float) -> Claim:
        self.renewals += 1
        if self.renewals <= self.failures:
            raise self.error("database unreachable")
        return await super().extend(claim, ttl)


async def test_three_failed_renewals_abandon_the_chunk(tmp_path: Path) -> None:
    db = tmp_path / "job.db"
    claims = FlakyRenewals(db, failures=3)
    # ttl 0.2 s: a heartbeat every 0.05 s; three failures in a row abandon chunk 0 after
    # ~0.15 s, while it still has ~0.35 s of work; a later pass takes it over once the lease
    # has run out and resumes from its saved progress.
    job = runner(db, Marker("a", delay=0.014), lease_ttl=0.2, claims=claims)
    assert await job.run(last=119) == {"marks": 120}
    assert job.chunks_abandoned == 1
    assert claims.renewals > 3
    assert rows(db) == [(n, "a") for n in range(120)]


async def test_renewals_that_wait_for_another_process_lock_lose_no_lease(tmp_path: Path) -> None:
    """StoreBusy (another process held the file locked): nobody could take the lease either,
    so five in a row are waited out instead of abandoning the chunk."""
    db = tmp_path / "job.db"
    claims = FlakyRenewals(db, failures=5, error=StoreBusy)
    job = runner(db, Marker("a", delay=0.014), lease_ttl=0.2, claims=claims)
    assert await job.run(last=119) == {"marks": 120}
    assert job.chunks_abandoned == 0
    assert claims.renewals > 5
    assert rows(db) == [(n, "a") for n in range(120)]


async def test_a_lease_taken_over_mid_chunk_fences_out_the_late_commits(tmp_path: Path) -> None:
    """A's lease expires mid-chunk; B takes the chunk over and commits; A's late commits are
    refused, so the rows and the chunk's progress are B's from the takeover on."""
    db = tmp_path / "job.db"
    now = [1000.0]
    clock: Callable[[], float] = lambda: now[0]  # noqa: E731
    taken: dict[str, int] = {}
    b_claims = SqliteClaimStore(db, clock=clock)

    async def take_over(sequence_number: int) -> None:
        if sequence_number != 30 or taken:
            return
        now[0] += 100  # A's 30 s lease has run out
        claim = await b_claims.claim("marks", 0, "b", ttl=30)
        assert claim is not None
        resume = await b_claims.progress("marks", 0) or 0
        taken["resume"] = resume
        async with b_claims.fenced(claim, next_checkpoint=resume + 5) as conn:
            await conn.executemany(
                "INSERT INTO marks (checkpoint, who) VALUES (?, ?)",
                [(n, "b") for n in range(resume, resume + 5)],
            )

    a_claims = SqliteClaimStore(db, clock=clock)
    job = runner(db, Marker("a", delay=0.002, hook=take_over), claims=a_claims)
    task = asyncio.create_task(job.run(last=49))
    try:
        while job.chunks_abandoned == 0:
            assert not task.done(), task.result()
            await asyncio.sleep(0.005)
        job.request_stop()
        await asyncio.wait_for(task, 10)
    finally:
        task.cancel()
        await b_claims.close()
    resume = taken["resume"]
    assert 0 < resume <= 30
    b_rows = [(n, "b") for n in range(resume, resume + 5)]
    assert rows(db) == [(n, "a") for n in range(resume)] + b_rows
    async with SqliteClaimStore(db, clock=clock) as claims:
        (state,) = await claims.chunks("marks")
    assert (state.owner, state.progress, state.done) == ("b", resume + 5, False)

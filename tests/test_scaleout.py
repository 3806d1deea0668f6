"""Scale-out through the real ``indexer run``: chunks leased from a claim store, many processes.

Every case checks the sink's rows against the feed: each transaction's row exactly once (the
sink shares the claim store's database, so rows commit in the lease-fenced transaction).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from harness import PROGRAMS, TRANSACTION_COLUMNS, Background, eventually, run_indexer

from indexer.claims import ChunkLayout, Claim, SqliteClaimStore
from indexer.cli.config import load_config
from indexer.cli.processes import run_processes
from indexer.cli.run import run_child
from indexer.sources import SyntheticSource

COUNT = 600


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("scaleout") / "feed"
    done = run_indexer("generate", "--out", directory, "--count", COUNT, "--seed", 3)
    assert done.returncode == 0, done.stderr
    return directory


def expected_digests() -> list[str]:
    source = SyntheticSource(seed=3)
    return sorted(tx.digest for n in range(COUNT) for tx in source.checkpoint_at(n).transactions)


def write_config(
    path: Path,
    feed: Path,
    store: str,
    *,
    sink: str,
    table: str,
    delay: float,
    pipeline: str,
    schema: str | None = None,
) -> Path:
    """The job's config; with ``schema`` (PostgreSQL) the indexer's tables and the sink's
    live in that schema."""
    options = f'table = "{table}", columns = {TRANSACTION_COLUMNS}'
    if schema is not None:
        options += f', schema = "{schema}"'
    path.write_text(
        f"""
[source]
feed = "{feed}"
follow = false

[progress]
store = "{store}"
{f'schema = "{schema}"' if schema is not None else ""}

[scale]
chunk_size = 100
lease_ttl = 1.0

[pipelines.{pipeline}]
worker = "slow_workers:SlowTransactionExtractor"
options = {{ delay = {delay} }}
concurrency = 4

[pipelines.{pipeline}.reducer]
class = "{sink}"
max_batch_size = 10
max_batch_age = 0.05
options = {{ {options} }}
"""
    )
    return path


def sqlite_job(tmp_path: Path, feed: Path, *, delay: float) -> tuple[Path, Path]:
    """The job most tests run: SqliteSink rows in the claim store's own file (exactly once)."""
    db = tmp_path / "index.db"
    config = write_config(
        tmp_path / "cfg.toml",
        feed,
        f"sqlite:{db}",
        sink="reducers.sqlite:SqliteSink",
        table="rows",
        delay=delay,
        pipeline="txs",
    )
    return db, config


def start(config: Path, *args: str, env: dict[str, str] | None = None) -> Background:
    """``indexer run`` of the whole job (to the feed's last checkpoint), JSON logs."""
    return Background.indexer(
        "run",
        "-c",
        config,
        "--last-checkpoint",
        COUNT - 1,
        "--no-metrics",
        "--no-progress",
        "--log-format",
        "json",
        *args,
        env=env,
    )


def start_two_working(config: Path) -> Background:
    """``--processes 2`` once the parent and its child each hold a chunk."""
    process = start(config, "--processes", "2")
    process.wait_until(
        "both processes claimed a chunk",
        lambda: len(process.events_named("chunk claimed")) >= 2,
    )
    return process


def sqlite_digests(db: Path, table: str) -> list[str]:
    with sqlite3.connect(db) as conn:
        return sorted(row[0] for row in conn.execute(f"SELECT digest FROM {table}"))


def test_processes_share_the_job_and_write_each_row_once(feed: Path, tmp_path: Path) -> None:
    db, config = sqlite_job(tmp_path, feed, delay=0.001)
    process = start(config, "--processes", "2")
    assert process.finish(60) == 0, process.describe()
    events = process.events()  # every line of both processes parses: one write per line
    assert [e["event"] for e in events].count("chunk done") == 6, process.describe()
    assert process.stdout_text.startswith("processed 600 checkpoints in "), process.describe()
    assert "by 2 processes; watermarks: txs=600" in process.stdout_text, process.describe()
    if sys.platform == "linux":  # nothing runs a thread before the children start: forked
        (started,) = [e for e in events if e["event"] == "started worker processes"]
        assert started["start_method"] == "fork" and len(started["pids"]) == 1
    assert sqlite_digests(db, "rows") == expected_digests()
    with sqlite3.connect(db) as conn:
        chunks = conn.execute("SELECT chunk, done FROM indexer_claims ORDER BY chunk").fetchall()
        owners = {o for (o,) in conn.execute("SELECT DISTINCT owner FROM indexer_claims")}
    assert chunks == [(n, 1) for n in range(6)]
    assert owners == {None}  # released
    report = json.loads(indexer("status", "-c", str(config), "--json"))
    (row,) = report["pipelines"]
    assert row["watermark"] == COUNT and row["lag"] == 0
    assert row["chunks"] == {
        "first": 0,
        "chunk_size": 100,
        "total": 6,
        "done": 6,
        "held": 0,
        "pending": [],
    }


def test_four_processes_write_whole_log_lines(feed: Path, tmp_path: Path) -> None:
    """Four processes share one stderr pipe: every line of it is one whole JSON record."""
    _db, config = sqlite_job(tmp_path, feed, delay=0.0)
    process = start(config, "--processes", "4", "--log-level", "debug")
    assert process.finish(60) == 0, process.describe()
    events = process.events()
    assert len(events) == len(process.stderr) > 24
    assert sum(e["event"] == "chunk done" for e in events) == 6
    assert len({e["owner"] for e in events if e["event"] == "chunk claimed"}) >= 2


def test_sigterm_to_the_parent_stops_every_process_and_a_rerun_finishes(
    feed: Path, tmp_path: Path
) -> None:
    """The parent forwards the signal: each process finishes its chunk in hand and exits 0,
    no child outlives the parent, and a second run completes the job, each row once."""
    db, config = sqlite_job(tmp_path, feed, delay=0.02)
    process = start_two_working(config)
    (started,) = process.events_named("started worker processes")
    assert process.stop(signal.SIGTERM) == 0, process.describe()
    events = process.events()
    stopping = [e for e in events if e["event"].startswith("stopping: finishing the chunk")]
    assert len(stopping) == 2, events  # the parent and its child each got the signal
    for pid in started["pids"]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # gone (and reaped by the parent)
    again = start(config, "--processes", "2")
    assert again.finish(60) == 0, again.describe()
    assert "txs=600" in again.stdout_text
    assert sqlite_digests(db, "rows") == expected_digests()


def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie nobody reaped counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_children_stop_gracefully_when_the_parent_is_killed(feed: Path, tmp_path: Path) -> None:
    """SIGKILL to the parent: its child gets the parent-death signal, finishes its chunk in
    hand and exits; a rerun then completes the job, each row once."""
    db, config = sqlite_job(tmp_path, feed, delay=0.02)
    process = start_two_working(config)
    (started,) = process.events_named("started worker processes")
    process.signal(signal.SIGKILL)
    assert process.finish() == -signal.SIGKILL
    (child,) = started["pids"]
    eventually("end of the orphaned child", lambda: gone(child))
    assert [e for e in process.events() if e["event"].startswith("stopping: finishing")]
    again = start(config, "--processes", "2")
    assert again.finish(60) == 0, again.describe()
    assert sqlite_digests(db, "rows") == expected_digests()


def test_sighup_stops_the_job_like_sigterm(feed: Path, tmp_path: Path) -> None:
    _db, config = sqlite_job(tmp_path, feed, delay=0.02)
    process = start_two_working(config)
    assert process.stop(signal.SIGHUP) == 0, process.describe()
    stopping = [e for e in process.events() if e["event"].startswith("stopping: finishing")]
    assert [e["signal"] for e in stopping] == [signal.SIGHUP] * 2


def test_a_child_that_fails_at_start_up_stops_the_command_at_once(
    feed: Path, tmp_path: Path
) -> None:
    """The child's worker refuses to start: the command exits 2 with that child's error,
    and the parent did none of the work alone."""
    db, config = sqlite_job(tmp_path, feed, delay=0.0)
    process = start(config, "--processes", "2", env={"SLOW_WORKER_REFUSE_IN_PROCESS": "1"})
    assert process.finish() == 2, process.describe()
    errors = [line for line in process.stderr if line.startswith("indexer: error: ")]
    assert len(errors) == 1, process.stderr
    assert errors[0].endswith("refused to start in worker process 1"), errors
    assert sqlite_digests_or_none(db) is None, "the parent started working alone"


def sqlite_digests_or_none(db: Path) -> list[str] | None:
    try:
        return sqlite_digests(db, "rows")
    except sqlite3.OperationalError:  # no such table: nothing was written
        return None


def test_children_are_spawned_where_forking_is_unsafe(
    feed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run_processes`` with the spawn start method (chosen when a thread is running or off
    Linux): the child is a fresh interpreter that gets the config pickled. This parent does
    no share of its own, so the child must do the whole job."""
    monkeypatch.syspath_prepend(str(PROGRAMS))  # the spawned child inherits sys.path
    db, path = sqlite_job(tmp_path, feed, delay=0.0)
    overrides = {
        "run.last_checkpoint": COUNT - 1,
        "metrics.enabled": False,
        "logging.progress": False,
        "scale.claims": f"sqlite:{db}",
    }
    config = load_config(path, overrides)
    failed = run_processes(config, 2, lambda forward, snapshots: None, run_child, method="spawn")
    assert failed == 0
    assert sqlite_digests(db, "rows") == expected_digests()


def test_status_shows_leases_and_reset_waits_for_them(feed: Path, tmp_path: Path) -> None:
    db, config = sqlite_job(tmp_path, feed, delay=0.0)

    async def lease() -> Claim:
        async with SqliteClaimStore(db) as claims:
            await claims.adopt_layout("txs", ChunkLayout(0, 100))
            await claims.ensure_chunks("txs", 6)
            done = await claims.claim("txs", 0, "host-a:1", ttl=60)
            assert done is not None
            await claims.release(done, done=True)
            held = await claims.claim("txs", 1, "host-b:2", ttl=60)
            assert held is not None
            await claims.save_progress(held, 142)
            return held

    held = asyncio.run(lease())
    report = json.loads(indexer("status", "-c", str(config), "--json"))
    chunks = report["pipelines"][0]["chunks"]
    assert (chunks["total"], chunks["done"], chunks["held"]) == (6, 1, 1)
    first = chunks["pending"][0]
    assert first["chunk"] == 1 and first["checkpoints"] == [100, 199]
    assert first["owner"] == "host-b:2" and first["progress"] == 142
    assert 0 < first["lease_expires_in"] <= 60
    assert [p["chunk"] for p in chunks["pending"]] == [1, 2, 3, 4, 5]
    table = indexer("status", "-c", str(config))
    assert "host-b:2" in table and "100..199" in table and "1/6" in table

    reset = ["reset", "-c", str(config), "--pipeline", "txs", "--to", "0", "--force"]
    refused = run_indexer(*reset)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "leased to 'host-b:2'" in refused.stderr

    async def release() -> None:
        async with SqliteClaimStore(db) as claims:
            await claims.release(held)

    asyncio.run(release())
    assert "dropped its 6 chunk claims" in indexer(*reset)
    report = json.loads(indexer("status", "-c", str(config), "--json"))
    assert "chunks" not in report["pipelines"][0]
    assert report["pipelines"][0]["watermark"] == 0


def indexer(*args: str) -> str:
    """Run ``indexer ARGS``; its stdout, after checking it succeeded."""
    done = run_indexer(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_scale_out_without_a_database_is_a_config_error(tmp_path: Path, feed: Path) -> None:
    config = write_config(
        tmp_path / "cfg.toml",
        feed,
        "memory",
        sink="reducers.sqlite:SqliteSink",
        table="rows",
        delay=0.0,
        pipeline="txs",
    )
    done = run_indexer("run", "-c", config, "--processes", 2)
    assert done.returncode == 2
    assert "scale-out needs an SQLite or PostgreSQL store" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def _kill_one_and_finish(tmp_path: Path, config: Path, claims: str) -> None:
    """Two processes join one job; one is SIGKILLed holding a chunk; the other finishes it all,
    taking the dead one's chunk over when its lease expires.

    The victim holds checkpoint 250 (chunk 2, after chunks 0 and 1) until killed, so the
    survivor, started once the victim is there, always finds work of its own and a chunk to
    take over, however fast either runs."""
    hold = tmp_path / "hold"
    hold.touch()
    victim = start(
        config,
        "--claims",
        claims,
        env={"SLOW_WORKER_HOLD_FROM": "250", "SLOW_WORKER_HOLD_WHILE": str(hold)},
    )
    victim.wait_until("the victim holds checkpoint 250", (tmp_path / "hold.reached").exists)
    survivor = start(config, "--claims", claims)
    survivor.wait_for_event("chunk claimed")
    victim.kill()
    assert victim.returncode == -signal.SIGKILL
    hold.unlink()
    assert survivor.finish(60) == 0, survivor.describe()
    assert f"={COUNT}" in survivor.stdout_text
    taken = {e["chunk"] for e in survivor.events_named("chunk claimed")}
    assert 2 in taken, survivor.describe()  # the victim's chunk, taken over


def test_sigkill_one_of_two_processes_and_the_job_completes_exactly_once(
    feed: Path, tmp_path: Path
) -> None:
    db, config = sqlite_job(tmp_path, feed, delay=0.001)
    _kill_one_and_finish(tmp_path, config, f"sqlite:{db}")
    assert sqlite_digests(db, "rows") == expected_digests()


def test_sigkill_one_of_two_processes_on_postgresql(
    feed: Path, tmp_path: Path, postgres_dsn: str, pg_schema: str
) -> None:
    """The same on PostgreSQL, in a schema of the test's own (dropped with all in it)."""
    import asyncpg

    config = write_config(
        tmp_path / "cfg.toml",
        feed,
        postgres_dsn,
        sink="reducers.postgres:PostgresSink",
        table="rows",
        delay=0.001,
        pipeline="txs",
        schema=pg_schema,
    )

    async def query(sql: str) -> list[Any]:
        conn = await asyncpg.connect(postgres_dsn)
        try:
            return list(await conn.fetch(sql))
        finally:
            await conn.close()

    _kill_one_and_finish(tmp_path, config, postgres_dsn)
    digests = sorted(r[0] for r in asyncio.run(query(f'SELECT digest FROM "{pg_schema}".rows')))
    assert digests == expected_digests()
    done = f"SELECT count(*) FROM \"{pg_schema}\".indexer_claims WHERE pipeline = 'txs' AND done"
    assert asyncio.run(query(done))[0][0] == COUNT // 100


PAUSE_AT = 250  # in chunk 2, after chunks 0 and 1


def frozen_victim(config: Path, claims: str, mark: Path, pause: float) -> Background:
    """A process of the job that pauses ``pause`` s inside the commit of the batch holding
    checkpoint PAUSE_AT (holding its transaction's locks), after creating ``mark``."""
    env = {
        "SLOW_SINK_PAUSE_FROM": str(PAUSE_AT),
        "SLOW_SINK_PAUSE_MARK": str(mark),
        "SLOW_SINK_PAUSE_SECONDS": str(pause),
    }
    return start(config, "--claims", claims, env=env)


def test_a_holder_frozen_inside_its_commit_is_taken_over_on_postgresql(
    feed: Path, tmp_path: Path, postgres_dsn: str, pg_schema: str
) -> None:
    """SIGSTOP inside the fenced transaction: the server ends that transaction once the lease
    has run out, so its row lock goes and another process takes the chunk over; resumed, the
    frozen process commits nothing. Every row once."""
    import asyncpg

    config = write_config(
        tmp_path / "cfg.toml",
        feed,
        postgres_dsn,
        sink="slow_workers:PausingPostgresSink",
        table="rows",
        delay=0.001,
        pipeline="txs",
        schema=pg_schema,
    )
    mark = tmp_path / "paused"
    victim = frozen_victim(config, postgres_dsn, mark, pause=1.0)
    victim.wait_until("the victim pauses inside its commit", mark.exists)
    victim.signal(signal.SIGSTOP)
    try:
        survivor = start(config, "--claims", postgres_dsn)
        assert survivor.finish(60) == 0, survivor.describe()
        assert 2 in {e["chunk"] for e in survivor.events_named("chunk claimed")}
    finally:
        victim.signal(signal.SIGCONT)
    assert victim.finish(60) == 0, victim.describe()

    async def digests() -> list[str]:
        conn = await asyncpg.connect(postgres_dsn)
        try:
            rows = await conn.fetch(f'SELECT digest FROM "{pg_schema}".rows')
        finally:
            await conn.close()
        return sorted(row[0] for row in rows)

    assert asyncio.run(digests()) == expected_digests()


def test_a_holder_frozen_inside_its_commit_on_sqlite_commits_nothing_when_resumed(
    feed: Path, tmp_path: Path
) -> None:
    """On SQLite the frozen process holds the file's write lock: the others wait (they do not
    give their chunks up for it), and the frozen one, resumed after its lease ran out, rolls
    its commit back. The job then completes, every row once."""
    db = tmp_path / "index.db"
    config = write_config(
        tmp_path / "cfg.toml",
        feed,
        f"sqlite:{db}",
        sink="slow_workers:PausingSqliteSink",
        table="rows",
        delay=0.005,
        pipeline="txs",
    )
    mark = tmp_path / "paused"
    survivor = start(config, "--claims", f"sqlite:{db}")
    survivor.wait_for_event("chunk claimed")
    victim = frozen_victim(config, f"sqlite:{db}", mark, pause=1.0)
    victim.wait_until("the victim pauses inside its commit", mark.exists)
    victim.signal(signal.SIGSTOP)
    time.sleep(2.0)  # frozen for longer than the lease (1 s): what is being tested
    victim.signal(signal.SIGCONT)
    assert victim.finish(60) == 0, victim.describe()
    assert survivor.finish(60) == 0, survivor.describe()
    refused = [
        e["error"]
        for e in victim.events_named("pipeline halted")
        if "refused" in e["error"] and "ran out during its commit" in e["error"]
    ]
    assert refused, victim.describe()  # its lease ran out while frozen: the commit rolled back
    renewals = [e for e in survivor.events() if "renewals failed" in str(e.get("reason"))]
    assert not renewals, survivor.describe()  # waiting for the lock lost no lease
    assert sqlite_digests(db, "rows") == expected_digests()

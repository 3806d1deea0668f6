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
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from indexer.claims import ChunkLayout, Claim, SqliteClaimStore
from indexer.cli.config import load_config
from indexer.cli.processes import run_processes
from indexer.cli.run import run_child
from indexer.sources import SyntheticSource

INDEXER = str(Path(sys.executable).with_name("indexer"))
PROGRAMS = Path(__file__).resolve().parent / "programs"
COUNT = 600
COLUMNS = (
    '{ checkpoint = "BIGINT", digest = "TEXT", sender = "TEXT", event_count = "BIGINT", '
    'timestamp_ms = "BIGINT" }'
)


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("scaleout") / "feed"
    done = subprocess.run(
        [INDEXER, "generate", "--out", str(directory), "--count", str(COUNT), "--seed", "3"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return directory


def expected_digests() -> list[str]:
    source = SyntheticSource(seed=3)
    return sorted(tx.digest for n in range(COUNT) for tx in source.checkpoint_at(n).transactions)


def write_config(
    path: Path, feed: Path, store: str, *, sink: str, table: str, delay: float, pipeline: str
) -> Path:
    options = f'table = "{table}", columns = {COLUMNS}'
    path.write_text(
        f"""
[source]
feed = "{feed}"
follow = false

[progress]
store = "{store}"

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


def start(config: Path, *args: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(PROGRAMS), os.environ.get("PYTHONPATH", "")]),
    }
    with log.open("wb") as err:
        return subprocess.Popen(
            [
                INDEXER,
                "run",
                "-c",
                str(config),
                "--last-checkpoint",
                str(COUNT - 1),
                "--no-metrics",
                "--no-progress",
                "--log-format",
                "json",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
        )


def wait_for(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()


def sqlite_digests(db: Path, table: str) -> list[str]:
    with sqlite3.connect(db) as conn:
        return sorted(row[0] for row in conn.execute(f"SELECT digest FROM {table}"))


def test_processes_share_the_job_and_write_each_row_once(feed: Path, tmp_path: Path) -> None:
    db, config = sqlite_job(tmp_path, feed, delay=0.001)
    process = start(config, "--processes", "2", log=tmp_path / "run.log")
    try:
        out, _ = process.communicate(timeout=60)
    finally:
        stop_all([process])
    log = (tmp_path / "run.log").read_text()
    assert log.count('"chunk done"') == 6, log[-2000:]
    assert process.returncode == 0, log[-2000:]
    assert "2 processes done" in out.decode() and "txs=600" in out.decode()
    if sys.platform == "linux":  # nothing runs a thread before the children start: forked
        (started,) = [e for e in json_lines(log) if e["event"] == "started worker processes"]
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


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_sigterm_to_the_parent_stops_every_process_and_a_rerun_finishes(
    feed: Path, tmp_path: Path
) -> None:
    """The parent forwards the signal: each process finishes its chunk in hand and exits 0,
    no child outlives the parent, and a second run completes the job, each row once."""
    db, config = sqlite_job(tmp_path, feed, delay=0.02)
    log = tmp_path / "run.log"
    process = start(config, "--processes", "2", log=log)
    try:
        wait_for(lambda: log.read_text().count('"chunk claimed"') >= 2)
        (started,) = [e for e in json_lines(log.read_text()) if "pids" in e]
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    finally:
        stop_all([process])
    events = json_lines(log.read_text())
    assert process.returncode == 0, log.read_text()[-2000:]
    stopping = [e for e in events if e["event"].startswith("stopping: finishing the chunk")]
    assert len(stopping) == 2, events  # the parent and its child each got the signal
    for pid in started["pids"]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # gone (and reaped by the parent)
    again = start(config, "--processes", "2", log=tmp_path / "again.log")
    try:
        out, _ = again.communicate(timeout=60)
    finally:
        stop_all([again])
    assert again.returncode == 0, (tmp_path / "again.log").read_text()[-2000:]
    assert "txs=600" in out.decode()
    assert sqlite_digests(db, "rows") == expected_digests()


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
    failed = run_processes(config, 2, lambda forward: None, run_child, method="spawn")
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

    reset = [INDEXER, "reset", "-c", str(config), "--pipeline", "txs", "--to", "0", "--force"]
    refused = subprocess.run(reset, capture_output=True, text=True, check=False)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "leased to 'host-b:2'" in refused.stderr

    async def release() -> None:
        async with SqliteClaimStore(db) as claims:
            await claims.release(held)

    asyncio.run(release())
    assert "drop its 6 chunk claims" in indexer(*reset[1:])
    report = json.loads(indexer("status", "-c", str(config), "--json"))
    assert "chunks" not in report["pipelines"][0]
    assert report["pipelines"][0]["watermark"] == 0


def indexer(*args: str) -> str:
    """Run ``indexer ARGS``; its stdout, after checking it succeeded."""
    done = subprocess.run([INDEXER, *args], capture_output=True, text=True, check=False)
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
    done = subprocess.run(
        [INDEXER, "run", "-c", str(config), "--processes", "2"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "scale-out needs an SQLite or PostgreSQL store" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def _kill_one_and_finish(tmp_path: Path, config: Path, claims: str, rows: Any) -> None:
    """Two processes join one job; one is SIGKILLed holding a chunk; the other finishes it all
    (taking the dead one's chunk over when its lease expires)."""
    victim = start(config, "--claims", claims, log=tmp_path / "victim.log")
    survivor: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: rows() >= 150 and "chunk claimed" in (tmp_path / "victim.log").read_text())
        survivor = start(config, "--claims", claims, log=tmp_path / "survivor.log")
        wait_for(lambda: "chunk claimed" in (tmp_path / "survivor.log").read_text())
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(10) == -signal.SIGKILL
        out, _ = survivor.communicate(timeout=60)
        log = (tmp_path / "survivor.log").read_text()
        assert survivor.returncode == 0, log[-2000:]
        assert f"={COUNT}" in out.decode()
    finally:
        stop_all([p for p in (victim, survivor) if p is not None])


def test_sigkill_one_of_two_processes_and_the_job_completes_exactly_once(
    feed: Path, tmp_path: Path
) -> None:
    db, config = sqlite_job(tmp_path, feed, delay=0.01)

    def rows() -> int:
        if not db.exists():
            return 0
        try:
            with sqlite3.connect(db, timeout=5) as conn:
                return conn.execute("SELECT count(DISTINCT checkpoint) FROM rows").fetchone()[0]
        except sqlite3.OperationalError:
            return 0

    _kill_one_and_finish(tmp_path, config, f"sqlite:{db}", rows)
    assert sqlite_digests(db, "rows") == expected_digests()


def test_sigkill_one_of_two_processes_on_postgresql(
    feed: Path, tmp_path: Path, postgres_dsn: str
) -> None:
    import asyncio

    import asyncpg

    suffix = uuid.uuid4().hex[:8]
    table, pipeline = f"rows_{suffix}", f"txs_{suffix}"
    config = write_config(
        tmp_path / "cfg.toml",
        feed,
        postgres_dsn,
        sink="reducers.postgres:PostgresSink",
        table=table,
        delay=0.01,
        pipeline=pipeline,
    )

    async def query(sql: str) -> list[Any]:
        conn = await asyncpg.connect(postgres_dsn)
        try:
            return list(await conn.fetch(sql))
        finally:
            await conn.close()

    def rows() -> int:
        try:
            return asyncio.run(query(f"SELECT count(DISTINCT checkpoint) FROM {table}"))[0][0]
        except asyncpg.UndefinedTableError:
            return 0

    try:
        _kill_one_and_finish(tmp_path, config, postgres_dsn, rows)
        digests = sorted(r[0] for r in asyncio.run(query(f"SELECT digest FROM {table}")))
        assert digests == expected_digests()
        done = asyncio.run(
            query(f"SELECT count(*) FROM indexer_claims WHERE pipeline = '{pipeline}' AND done")
        )
        assert done[0][0] == COUNT // 100
    finally:
        for sql in (
            f"DROP TABLE IF EXISTS {table}",
            f"DELETE FROM indexer_claims WHERE pipeline = '{pipeline}'",
            f"DELETE FROM indexer_watermarks WHERE pipeline = '{pipeline}'",
        ):
            asyncio.run(query(sql))

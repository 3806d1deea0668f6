"""One writer per pipeline: a second run of a held pipeline refuses at start, a run that lost
its lease commits nothing, a dead holder on this host is taken over at once."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from harness import Background, run_indexer, saved_watermark

from indexer import Checkpoint, IndexerExecutor, PipelineHalted, Worker, WorkerPool
from indexer.claims import WHOLE, SqliteClaimStore
from indexer.errors import PipelineHeld
from indexer.progress import FileProgressStore, ProgressStore, SqliteProgressStore
from indexer.sources import MemorySource, SyntheticSource
from indexer.testing import RecordingReducer, make_checkpoints

COUNT = 400
PIPELINE = "transactions"
HELD = re.compile(
    r"indexer: error: pipeline 'transactions' is held by [^ ]+:\d+ since \d\d:\d\d:\d\d "
    r"\(lease renewed \d+ s ago\); stop it, or share the work with --processes/--claims\n"
)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("single-writer") / "feed"
    done = run_indexer("generate", "--out", directory, "--count", COUNT, "--seed", 5)
    assert done.returncode == 0, done.stderr
    return directory


def expected_digests() -> list[str]:
    source = SyntheticSource(seed=5)
    return sorted(tx.digest for n in range(COUNT) for tx in source.checkpoint_at(n).transactions)


def write_config(path: Path, feed: Path, store: str, **progress: Any) -> Path:
    """The example job (TransactionExtractor into SqliteSink/PostgresSink in the store's own
    database), slowed to 5 ms a checkpoint so that two runs overlap."""
    sink = "reducers:PostgresSink" if store.startswith("postgresql") else "reducers:SqliteSink"
    options: dict[str, Any] = {
        "table": "transactions",
        "columns": {
            "checkpoint": "BIGINT",
            "digest": "TEXT",
            "sender": "TEXT",
            "event_count": "BIGINT",
            "timestamp_ms": "BIGINT",
        },
    }
    if "schema" in progress:
        options["schema"] = progress["schema"]
    config = {
        "source": {"feed": str(feed), "follow": False},
        "progress": {"store": store, **progress},
        "metrics": {"enabled": False},
        "logging": {"progress": False, "format": "json"},
        "pipelines": {
            PIPELINE: {
                "worker": "slow_workers:SlowTransactionExtractor",
                "options": {"delay": 0.005},
                "concurrency": 4,
                "reducer": {
                    "class": sink,
                    "max_batch_size": 10,
                    "max_batch_age": 0.05,
                    "options": options,
                },
            }
        },
    }
    path.write_text(tomli_w.dumps(config), encoding="utf-8")
    return path


def run(config: Path) -> Background:
    return Background.indexer("run", "-c", config, "--last-checkpoint", COUNT - 1)


def sqlite_digests(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        found = sorted(row[0] for row in conn.execute("SELECT digest FROM transactions"))
    conn.close()
    return found


def first_run_committed(feed: Path, tmp_path: Path) -> tuple[Path, Path, Background, Path]:
    """A SQLite job and a run of it that has made its first commit (so it holds the lease),
    held at checkpoint ``COUNT // 2`` while the returned file exists: however slow the
    machine, it holds the lease until the test removes that file."""
    db = tmp_path / "index.db"
    config = write_config(tmp_path / "config.toml", feed, f"sqlite:{db}")
    hold = tmp_path / "hold"
    hold.touch()
    first = Background.indexer(
        "run",
        "-c",
        config,
        "--last-checkpoint",
        COUNT - 1,
        env={"SLOW_WORKER_HOLD_FROM": str(COUNT // 2), "SLOW_WORKER_HOLD_WHILE": str(hold)},
    )
    first.wait_until("a first commit", lambda: saved_watermark(db, PIPELINE))
    return db, config, first, hold


def test_a_second_run_of_a_held_pipeline_refuses_at_start_naming_the_holder(
    feed: Path, tmp_path: Path
) -> None:
    db, config, first, hold = first_run_committed(feed, tmp_path)
    second = run(config)
    assert second.finish() == 2, second.describe()
    assert HELD.fullmatch(second.stderr_text), second.stderr_text
    assert f":{first.proc.pid} since" in second.stderr_text
    hold.unlink()
    assert first.finish() == 0, first.describe()
    assert sqlite_digests(db) == expected_digests()  # every row once


def test_two_runs_started_at_once_write_every_row_once(feed: Path, tmp_path: Path) -> None:
    db = tmp_path / "index.db"
    config = write_config(tmp_path / "config.toml", feed, f"sqlite:{db}")
    runs = [run(config), run(config)]
    codes = sorted(r.finish() for r in runs)
    assert codes == [0, 2], [r.describe() for r in runs]
    refused = next(r for r in runs if r.returncode == 2)
    assert HELD.fullmatch(refused.stderr_text), refused.stderr_text
    assert saved_watermark(db, PIPELINE) == COUNT
    assert sqlite_digests(db) == expected_digests()


def test_on_postgresql_too(feed: Path, tmp_path: Path, postgres_dsn: str, pg_schema: str) -> None:
    import asyncpg

    config = write_config(tmp_path / "config.toml", feed, postgres_dsn, schema=pg_schema)
    runs = [run(config), run(config)]
    codes = sorted(r.finish() for r in runs)
    assert codes == [0, 2], [r.describe() for r in runs]
    refused = next(r for r in runs if r.returncode == 2)
    assert HELD.fullmatch(refused.stderr_text), refused.stderr_text

    async def digests() -> list[str]:
        conn = await asyncpg.connect(postgres_dsn)
        try:
            rows = await conn.fetch(f'SELECT digest FROM "{pg_schema}".transactions')
        finally:
            await conn.close()
        return sorted(row[0] for row in rows)

    assert asyncio.run(digests()) == expected_digests()


def test_a_restart_right_after_a_sigkill_takes_the_dead_holders_lease_at_once(
    feed: Path, tmp_path: Path
) -> None:
    """The default lease lives 30 s: a restart that waited for it would refuse (exit 2)."""
    db, config, first, _hold = first_run_committed(feed, tmp_path)
    first.signal(signal.SIGKILL)
    assert first.finish() == -signal.SIGKILL
    second = run(config)
    assert second.finish() == 0, second.describe()
    assert "took over the lease of a dead process" in second.stderr_text
    assert sqlite_digests(db) == expected_digests()


def test_a_chunked_job_refuses_while_a_run_without_chunks_holds_the_pipeline(
    feed: Path, tmp_path: Path
) -> None:
    db, config, first, hold = first_run_committed(feed, tmp_path)
    chunked = Background.indexer(
        "run", "-c", config, "--last-checkpoint", COUNT - 1, "--processes", 2
    )
    assert chunked.finish() == 2, chunked.describe()
    assert chunked.stderr[-1].startswith("indexer: error: pipeline 'transactions' is held by ")
    hold.unlink()
    assert first.finish() == 0, first.describe()
    assert sqlite_digests(db) == expected_digests()


# -- through the library -------------------------------------------------------------------------


class Numbers(Worker[Checkpoint, int]):
    name = "numbers"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    async def process_checkpoint(self, checkpoint: Checkpoint) -> int:
        await asyncio.sleep(self.delay)
        return checkpoint.sequence_number


def executor(store: ProgressStore, reducer: RecordingReducer[int], **options: Any) -> Any:
    run = IndexerExecutor(store, handle_signals=False, tune_gc=False, **options)
    run.register(WorkerPool(Numbers(0.002), concurrency=2, reducer=reducer))
    return run


async def test_a_run_that_lost_its_lease_commits_nothing_more(tmp_path: Path) -> None:
    """Another owner takes the pipeline's lease over mid-run: the next commit is refused, the
    run halts, and nothing after the takeover was committed."""
    db = tmp_path / "index.db"
    reducer = RecordingReducer[int](max_batch_size=5, max_batch_age=None)
    total = 20_000  # 20 s of work at the least: the run cannot end before the takeover
    running = asyncio.create_task(
        executor(SqliteProgressStore(db), reducer, owner="host-a:1").run(
            MemorySource(make_checkpoints(total))
        )
    )
    async with SqliteClaimStore(db) as claims:
        while not reducer.batches:
            await asyncio.sleep(0.005)
        (held,) = await claims.holders("numbers")
        assert (held.chunk, held.owner) == (WHOLE, "host-a:1")
        assert await claims.expire("numbers", held)
        intruder = await claims.claim("numbers", WHOLE, "host-b:2", ttl=60)
        assert intruder is not None
        committed_then = len(reducer.messages)
        with pytest.raises(PipelineHalted, match="refused"):
            await asyncio.wait_for(running, 10)
        async with SqliteProgressStore(db) as store:
            saved = await store.load("numbers")
    # A TransactionalReducer would show no row past ``saved``: here, no watermark past what
    # the store held when the lease moved, and the run stopped at once.
    assert saved is not None and saved <= committed_then + 5
    assert saved < total


async def test_the_json_file_store_is_held_by_an_os_lock(tmp_path: Path) -> None:
    path = tmp_path / "progress.json"
    first = FileProgressStore(path)
    lost: list[str] = []
    async with first.hold(["a"], owner="host:1", ttl=30, on_lost=lambda p, r: lost.append(p)):
        with pytest.raises(PipelineHeld, match=r"progress.json .* is held by host:1 since "):
            async with FileProgressStore(path).hold(
                ["a"], owner="host:2", ttl=30, on_lost=lambda p, r: None
            ):
                pass
        program = (
            "import asyncio, sys\n"
            "from indexer.progress import FileProgressStore\n"
            "async def main():\n"
            f"    async with FileProgressStore({str(path)!r}).hold(['a'], owner='host:3',"
            " ttl=30, on_lost=print):\n"
            "        pass\n"
            "asyncio.run(main())\n"
        )
        other = subprocess.run(
            [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
        )
        assert other.returncode != 0 and "is held by host:1" in other.stderr
    async with FileProgressStore(path).hold(["a"], owner="host:2", ttl=30, on_lost=print):
        pass  # free again once the first ended
    assert lost == []
    assert os.path.exists(f"{path}.lock")


def test_reset_refuses_while_a_run_holds_the_pipeline(feed: Path, tmp_path: Path) -> None:
    db, config, first, hold = first_run_committed(feed, tmp_path)
    reset = run_indexer("reset", "-c", config, "--pipeline", PIPELINE, "--to", 0, "--force")
    assert reset.returncode == 2, reset.stderr
    assert reset.stderr == (
        f"indexer: error: pipeline 'transactions' is running: it is leased to "
        f"'{socket.gethostname()}:{first.proc.pid}'; stop every process of the job before "
        "a reset\n"
    )
    hold.unlink()
    assert first.finish() == 0, first.describe()
    assert sqlite_digests(db) == expected_digests()

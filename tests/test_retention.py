"""Retention end to end, through the real ``indexer run``: a pipeline with ``retention = N``
keeps the rows of its newest N checkpoints and deletes the rest in the background; the mark it
records (shown by ``indexer status`` and ``indexer_pruned_below``) is written after the rows
below it are gone, so that a run killed (SIGKILL) mid-prune leaves it low and the next run
finishes the prune; a failing prune is retried and logged while commits go on; ``indexer
reset`` lowers the mark and ``--drop`` forgets it; a retention the pipeline cannot honour
stops the command at start (exit 2) with one line naming the file and the key."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from harness import (
    TIMEOUT,
    TRANSACTION_COLUMN_TYPES,
    Background,
    check_metrics_with_promtool,
    free_port,
    run_indexer,
)
from prometheus_client.parser import text_string_to_metric_families

from indexer.sources import SyntheticSource
from workers import ActivityCounter

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

COUNT = 600
SEED = 23
PIPELINE = "transactions"
COLUMNS = TRANSACTION_COLUMN_TYPES


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("retention") / "feed"
    done = run_indexer("generate", "--out", directory, "--count", COUNT, "--seed", SEED)
    assert done.returncode == 0, done.stderr
    return directory


def rows_per_checkpoint(first: int, end: int = COUNT) -> Counter[int]:
    """How many rows TransactionExtractor writes for each of checkpoints ``first..end-1``."""
    source = SyntheticSource(seed=SEED)
    return Counter({n: len(source.checkpoint_at(n).transactions) for n in range(first, end)})


# -- where the rows and the mark live ---------------------------------------------------------


@dataclass
class SqliteTarget:
    """The SQLite store ``db``, the sink's rows in ``rows_db`` (the store's file, or its own)."""

    db: Path
    rows_db: Path
    table: str = "transactions"

    @property
    def store(self) -> str:
        return f"sqlite:{self.db}"

    def sink_options(self) -> dict[str, Any]:
        return {} if self.rows_db == self.db else {"path": str(self.rows_db)}

    def progress(self) -> dict[str, Any]:
        return {"store": self.store}

    def fetch(self, db: Path, sql: str) -> list[Any]:
        """Rows of ``sql`` (none while the file or the table is missing)."""
        if not db.exists():
            return []
        conn = sqlite3.connect(db, timeout=TIMEOUT)
        try:
            return conn.execute(sql).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
        finally:
            conn.close()

    def rows(self) -> Counter[int]:
        """The sink's rows, counted by checkpoint."""
        return Counter(
            c for (c,) in self.fetch(self.rows_db, f"SELECT checkpoint FROM {self.table}")
        )

    def mark(self) -> int | None:
        """The pruned-below mark the store holds."""
        sql = f"SELECT below FROM indexer_pruned WHERE pipeline = '{PIPELINE}'"
        found = self.fetch(self.db, sql)
        return int(found[0][0]) if found else None


@dataclass
class PostgresTarget:
    """A PostgreSQL store and sink in the test's own ``schema``."""

    dsn: str
    schema: str
    table: str = "transactions"
    _runner: asyncio.Runner = field(default_factory=asyncio.Runner)
    _conn: Any = None

    @property
    def store(self) -> str:
        return self.dsn

    def sink_options(self) -> dict[str, Any]:
        return {"schema": self.schema}

    def progress(self) -> dict[str, Any]:
        return {"store": self.dsn, "schema": self.schema}

    def fetch(self, sql: str) -> list[Any]:
        import asyncpg

        if self._conn is None:
            self._conn = self._runner.run(asyncpg.connect(self.dsn))
        try:
            return list(self._runner.run(self._conn.fetch(sql)))
        except asyncpg.UndefinedTableError:
            return []

    def rows(self) -> Counter[int]:
        sql = f'SELECT checkpoint FROM "{self.schema}".{self.table}'
        return Counter(int(row[0]) for row in self.fetch(sql))

    def mark(self) -> int | None:
        sql = f"SELECT below FROM \"{self.schema}\".indexer_pruned WHERE pipeline = '{PIPELINE}'"
        found = self.fetch(sql)
        return int(found[0][0]) if found else None

    def close(self) -> None:
        try:
            if self._conn is not None:
                self._runner.run(self._conn.close())
        finally:
            self._runner.close()


Target = SqliteTarget | PostgresTarget


def make_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    kind = request.param
    if kind == "postgres":
        target = PostgresTarget(
            request.getfixturevalue("postgres_dsn"), request.getfixturevalue("pg_schema")
        )
        try:
            yield target
        finally:
            target.close()
        return
    db = tmp_path / "index.db"
    yield SqliteTarget(db, db if kind == "sqlite" else tmp_path / "rows.db")


@pytest.fixture(params=["sqlite", "sqlite-own-file", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """The sink in the SQLite store's file, in a file of its own, or in the PostgreSQL store's
    database (its own schema, dropped after)."""
    yield from make_target(request, tmp_path)


@pytest.fixture(params=["sqlite", "postgres"])
def shared_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """The sink in the store's database: SQLite or PostgreSQL."""
    yield from make_target(request, tmp_path)


def write_config(
    tmp_path: Path,
    feed: Path,
    target: Target,
    *,
    retention: int | None,
    sink: str | None = None,
    metrics_port: int | None = None,
    worker: str = "workers:TransactionExtractor",
    reducer: dict[str, Any] | None = None,
    **options: Any,
) -> Path:
    """A live run (``follow``) of TransactionExtractor into the target's sink, pruned every
    50 ms to the newest ``retention`` checkpoints; ``options`` go to the sink."""
    if sink is None:
        sink = (
            "reducers:PostgresSink" if isinstance(target, PostgresTarget) else "reducers:SqliteSink"
        )
    pipeline: dict[str, Any] = {
        "worker": worker,
        "retention_interval": 0.05,
        "reducer": reducer
        or {
            "class": sink,
            "max_batch_size": 50,
            "options": {"table": "transactions", "columns": COLUMNS}
            | target.sink_options()
            | options,
        },
    }
    if retention is not None:
        pipeline["retention"] = retention
    metrics = {"enabled": False}
    if metrics_port is not None:
        metrics = {"enabled": True, "address": f"127.0.0.1:{metrics_port}"}
    config = {
        "source": {"feed": str(feed), "follow": True, "poll_interval": 0.05},
        "progress": target.progress(),
        "metrics": metrics,
        "logging": {"progress": False, "format": "json"},
        "pipelines": {PIPELINE: pipeline},
    }
    path = tmp_path / "config.toml"
    path.write_text(tomli_w.dumps(config), encoding="utf-8")
    return path


def run_until_marked(config: Path, target: Target, mark: int) -> Background:
    """Start ``indexer run`` and wait until the store holds the pruned mark ``mark``."""
    run = Background.indexer("run", "-c", config)
    run.wait_until(f"the pruned mark at {mark}", lambda: target.mark() == mark)
    return run


def status_row(config: Path) -> dict[str, Any]:
    done = run_indexer("status", "-c", config, "--json")
    assert done.returncode == 0, done.stderr
    (row,) = [row for row in json.loads(done.stdout)["pipelines"] if row["pipeline"] == PIPELINE]
    return dict(row)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def pruned_below_metric(text: str) -> float | None:
    """``indexer_pruned_below{pipeline}`` in an exposition, or None."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "indexer_pruned_below" and sample.labels == {"pipeline": PIPELINE}:
                return float(sample.value)
    return None


def scraped_with_mark(port: int, mark: int) -> str | None:
    """The exposition on ``port`` if it shows the pruned mark ``mark``, else None (not yet:
    the store holds a mark a moment before the metric does)."""
    text = scrape(port)
    return text if pruned_below_metric(text) == mark else None


# -- the tests ---------------------------------------------------------------------------------


def test_a_live_run_keeps_only_the_newest_checkpoints_rows(
    feed: Path, tmp_path: Path, target: Target
) -> None:
    port = free_port()
    config = write_config(tmp_path, feed, target, retention=100, metrics_port=port)
    run = run_until_marked(config, target, COUNT - 100)
    text = run.wait_until("the mark as a metric", lambda: scraped_with_mark(port, COUNT - 100))
    check_metrics_with_promtool(text)
    assert run.stop() == 0, run.describe()
    assert target.rows() == rows_per_checkpoint(COUNT - 100)  # none below, all the rest
    assert status_row(config)["pruned_below"] == COUNT - 100
    table = run_indexer("status", "-c", config)
    assert table.returncode == 0, table.stderr
    assert "pruned" in table.stdout and "500" in table.stdout
    pruned = [e for e in run.events() if e["event"] == "pruned"]
    assert pruned[-1]["below"] == COUNT - 100
    assert sum(e["rows"] for e in pruned) == sum(rows_per_checkpoint(0, COUNT - 100).values())


def test_a_job_in_chunks_prunes_below_the_jobs_watermark_each_row_once(
    feed: Path, tmp_path: Path, shared_target: Target
) -> None:
    """``--processes 2``, chunks of 100: every process prunes below the job's watermark (its
    done chunks' contiguous prefix), never below a chunk's own; each row goes once."""
    target = shared_target
    port = free_port()
    config = write_config(tmp_path, feed, target, retention=150, metrics_port=port)
    run = Background.indexer("run", "-c", config, "--processes", "2", "--chunk-size", "100")
    run.wait_until("the pruned mark at 450", lambda: target.mark() == COUNT - 150)
    text = run.wait_until(
        "the mark as the parent's metric", lambda: scraped_with_mark(port, COUNT - 150)
    )
    check_metrics_with_promtool(text)
    assert run.stop() == 0, run.describe()
    assert target.rows() == rows_per_checkpoint(COUNT - 150)
    pruned = [e for e in run.events() if e["event"] == "pruned"]
    assert sum(e["rows"] for e in pruned) == sum(rows_per_checkpoint(0, COUNT - 150).values())
    assert status_row(config)["pruned_below"] == COUNT - 150


def test_a_kill_mid_prune_leaves_the_mark_low_and_the_next_run_finishes_it(
    feed: Path, tmp_path: Path, shared_target: Target
) -> None:
    target = shared_target
    first = write_config(tmp_path, feed, target, retention=COUNT - 100)
    assert run_until_marked(first, target, 100).stop() == 0
    assert target.rows() == rows_per_checkpoint(100)

    # A shorter retention, pruned a row per transaction: slow enough to be killed in the middle.
    boundary = COUNT - 350
    config = write_config(tmp_path, feed, target, retention=350, prune_chunk_size=1)
    between = sum(rows_per_checkpoint(100, boundary).values())

    def pruning() -> bool:
        left = sum(n for c, n in target.rows().items() if c < boundary)
        return 0 < left < between

    run = Background.indexer("run", "-c", config)
    run.wait_until("the prune under way", pruning)
    run.kill()  # SIGKILL, mid-prune
    assert target.mark() == 100  # recorded only once all rows below a mark are gone
    rows = target.rows()
    assert not [c for c in rows if c < 100]  # below the recorded mark: gone
    assert Counter({c: n for c, n in rows.items() if c >= boundary}) == rows_per_checkpoint(
        boundary
    )  # at and above the retention's boundary: intact
    assert 0 < sum(n for c, n in rows.items() if c < boundary) < between  # the cut prune

    again = run_until_marked(config, target, boundary)  # the next run redoes the rest
    assert again.stop() == 0, again.describe()
    assert target.rows() == rows_per_checkpoint(boundary)
    assert status_row(config)["pruned_below"] == boundary


def test_a_failing_prune_is_retried_and_logged_while_commits_go_on(
    feed: Path, tmp_path: Path
) -> None:
    db = tmp_path / "index.db"
    target = SqliteTarget(db, db)
    config = write_config(
        tmp_path,
        feed,
        target,
        retention=100,
        sink="pruning_sinks:FlakyPruneSqliteSink",
        prune_failures=2,
    )
    run = run_until_marked(config, target, COUNT - 100)
    assert run.stop() == 0, run.describe()
    failures = [e for e in run.events() if e["event"] == "prune failed"]
    assert [(e["attempt"], e["level"]) for e in failures] == [(1, "warning"), (2, "warning")]
    assert "disk I/O error (injected)" in failures[0]["error"]
    assert not [e for e in run.events() if e["event"] == "pipeline halted"]
    assert target.rows() == rows_per_checkpoint(COUNT - 100)


def test_counter_sink_totals_count_only_the_newest_checkpoints(feed: Path, tmp_path: Path) -> None:
    db = tmp_path / "index.db"
    target = SqliteTarget(db, db, table="activity_counts")
    reducer = {"class": "reducers:CounterSink", "max_batch_size": 50}
    config = write_config(
        tmp_path, feed, target, retention=100, worker="workers:ActivityCounter", reducer=reducer
    )
    assert run_until_marked(config, target, COUNT - 100).stop() == 0

    async def newest() -> Counter[tuple[str, str]]:
        worker, source, totals = ActivityCounter(), SyntheticSource(seed=SEED), Counter()
        for n in range(COUNT - 100, COUNT):
            totals.update(await worker.process_checkpoint(source.checkpoint_at(n)))
        return totals

    found = target.fetch(db, "SELECT dimension, key, count FROM activity_counts")
    assert {(d, k): n for d, k, n in found} == dict(asyncio.run(newest()))


def test_reset_lowers_the_mark_and_drop_forgets_it(feed: Path, tmp_path: Path) -> None:
    db = tmp_path / "index.db"
    target = SqliteTarget(db, db)
    config = write_config(tmp_path, feed, target, retention=100)
    assert run_until_marked(config, target, COUNT - 100).stop() == 0
    done = run_indexer("reset", "-c", config, "--pipeline", PIPELINE, "--to", 300, "--force")
    assert done.returncode == 0, done.stderr
    assert status_row(config)["pruned_below"] == 300  # checkpoints 300.. are written again
    done = run_indexer("reset", "-c", config, "--pipeline", PIPELINE, "--to", 550, "--force")
    assert done.returncode == 0, done.stderr
    assert status_row(config)["pruned_below"] == 300  # rows below 300 are still gone
    done = run_indexer("reset", "-c", config, "--pipeline", PIPELINE, "--drop", "--force")
    assert done.returncode == 0, done.stderr
    assert target.mark() is None


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"retention": 0}, "pipelines.transactions.retention must be at least 1 checkpoint, got 0"),
        (
            {"sink": "reducers:JsonlSink"},
            "pipelines.transactions.retention is set, but JsonlSink cannot prune its rows",
        ),
        (
            {"checkpoint_column": ""},
            "pipelines.transactions.retention is set, but SqliteSink 'transactions' cannot prune "
            "its rows: it records no checkpoint of them (checkpoint_column)",
        ),
    ],
    ids=["zero", "jsonl", "no checkpoint column"],
)
def test_a_retention_the_pipeline_cannot_honour_stops_the_run_at_start(
    feed: Path, tmp_path: Path, change: dict[str, Any], error: str
) -> None:
    db = tmp_path / "index.db"
    target = SqliteTarget(db, db)
    retention = change.pop("retention", 10)
    if change.get("sink") == "reducers:JsonlSink":
        reducer = {
            "class": "reducers:JsonlSink",
            "options": {"path": str(tmp_path / "rows.jsonl")},
        }
        config = write_config(tmp_path, feed, target, retention=retention, reducer=reducer)
    else:
        config = write_config(tmp_path, feed, target, retention=retention, **change)
    done = run_indexer("run", "-c", config)
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"indexer: error: {config}: {error}\n"
    assert target.rows() == Counter()  # nothing ran

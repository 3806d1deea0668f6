"""Crash tests for the ready-made sinks, through the real ``indexer run`` in a subprocess.

Each test indexes the same generated feed (``indexer generate``, checkpoints 0..FEED_COUNT-1)
with ``workers.transactions:TransactionExtractor`` into one sink, SIGKILLs the run at
seeded-random moments (mostly as soon as the sink holds a random number of rows, sometimes a
random time after the start), restarts it, and repeats until a run exits 0 (at most MAX_KILLS
kills, then the last run is left to finish). After every kill and at the end the sink's rows
are checked against the rows decoded from the feed's ``.chk`` files:

- transactional (SqliteSink on the SQLite store's file, PostgresSink on the PostgreSQL store's
  database): after every kill exactly the rows of the checkpoints below the saved watermark;
  at the end every row exactly once.
- at-least-once (JsonlSink, SqliteSink on its own file): after every kill none of the rows below
  the watermark is missing and no row is foreign; at the end none is missing, duplicates allowed.
- idempotent (SqliteSink on its own file with an upsert key on ``digest``): as at-least-once,
  but never a duplicate, and exactly once at the end.

At least one kill must land mid-run (a watermark strictly between 0 and FEED_COUNT after it),
so no test can pass without having crashed anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec
import pytest
import tomli_w
from harness import Background, run_indexer

from indexer.checkpoint import Checkpoint, CheckpointDecoder
from reducers.jsonl import rotated_files
from workers.transactions import TransactionExtractor

FEED_COUNT = 500  # checkpoints 0..499, ~4,000 transactions
SEED = 1
MAX_KILLS = 15
STEP = FEED_COUNT // 5  # the most checkpoints a run may commit before a kill
BATCH_SIZE = 2  # small batches: many commits per run, so kills land between them
TIMEOUT = 30.0  # generous waits for a loaded 2-core machine; the assertions stay exact
POLL = 0.002
COLUMNS = dict(TransactionExtractor.columns)
ROW_SELECT = "SELECT checkpoint, digest, sender, event_count, timestamp_ms FROM {}"

Row = tuple[int, str, str, int, int]
Delivery = Literal["transactional", "at-least-once", "idempotent"]

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


# -- the feed and what it should produce ------------------------------------------------------


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A feed made by the real ``indexer generate``."""
    directory = tmp_path_factory.mktemp("feed") / "feed"
    result = run_indexer("generate", "--out", directory, "--count", FEED_COUNT, "--seed", SEED)
    assert result.returncode == 0, result.stderr
    return directory


@dataclass
class Expected:
    """What TransactionExtractor makes of each checkpoint of the feed, decoded from its files."""

    by_checkpoint: list[list[Row]]
    everything: set[Row] = field(init=False)
    _counts: list[int] = field(init=False)  # rows of checkpoints 0..n-1

    def __post_init__(self) -> None:
        self.everything = {row for rows in self.by_checkpoint for row in rows}
        self._counts = [0]
        for rows in self.by_checkpoint:
            self._counts.append(self._counts[-1] + len(rows))

    def below(self, watermark: int) -> list[Row]:
        """The rows of checkpoints 0..watermark-1, sorted."""
        return sorted(row for rows in self.by_checkpoint[:watermark] for row in rows)

    def count_below(self, watermark: int) -> int:
        return self._counts[watermark]


@pytest.fixture(scope="module")
def expected(feed: Path) -> Expected:
    decoder: CheckpointDecoder[Checkpoint] = CheckpointDecoder()
    by_checkpoint = []
    for n in range(FEED_COUNT):
        path = feed / f"{n}.chk"
        checkpoint = decoder.decode(path.read_bytes(), sequence_number=n, origin=str(path))
        by_checkpoint.append(
            [
                (n, tx.digest, tx.sender, len(tx.events), checkpoint.timestamp_ms)
                for tx in checkpoint.transactions
            ]
        )
    result = Expected(by_checkpoint)
    # Every checkpoint has a row (a row count names a checkpoint) and digests are unique (so
    # an upsert keyed on the digest must end with exactly one row per transaction).
    assert all(by_checkpoint)
    assert len({row[1] for row in result.everything}) == result.count_below(FEED_COUNT)
    return result


# -- running and killing ``indexer run`` -------------------------------------------------------


def start_run(tmp: Path, config: Path) -> Background:
    """``indexer run -c CONFIG --last-checkpoint FEED_COUNT-1`` in the background."""
    args = ["run", "-c", config, "--last-checkpoint", FEED_COUNT - 1]
    return Background.indexer(
        *args, "--no-metrics", "--no-progress", "--log-format", "json", cwd=tmp
    )


@dataclass
class Sink:
    """One sink under test: its config and how to look at what it and the store hold."""

    pipeline: str
    store: str
    reducer: dict[str, Any]
    delivery: Delivery
    rows: Callable[[], list[Row]]  # what the sink holds (the indexer is not running)
    count: Callable[[], int]  # a cheap row count while it runs (0 when nothing is there)
    watermark: Callable[[], int | None]  # the saved watermark (the indexer is not running)
    schema: str | None = None  # PostgreSQL: where the indexer's own tables live


def write_config(path: Path, feed: Path, sink: Sink) -> Path:
    config = {
        "source": {"kind": "local", "feed": str(feed), "follow": False, "batch_size": 64},
        "progress": {"store": sink.store, **({"schema": sink.schema} if sink.schema else {})},
        "metrics": {"enabled": False},
        "logging": {"format": "json", "progress": False},
        "pipelines": {
            sink.pipeline: {
                "worker": "workers.transactions:TransactionExtractor",
                "concurrency": 2,
                "reducer": {"max_batch_size": BATCH_SIZE, "max_batch_age": 0.05, **sink.reducer},
            }
        },
    }
    path.write_text(tomli_w.dumps(config), encoding="utf-8")
    return path


def kill_at_random_moment(
    run: Background, sink: Sink, expected: Expected, rng: random.Random, before: int
) -> bool:
    """SIGKILL ``run`` at a moment ``rng`` picks; False if it ended by itself first (or had
    nothing left to do). ``before`` is the watermark it started from."""
    if before >= FEED_COUNT:
        return False
    first = before == 0
    deadline = time.monotonic() + TIMEOUT

    def wait_until(what: str, condition: Callable[[], bool]) -> None:
        while run.returncode is None and not condition():
            if time.monotonic() > deadline:
                run.kill()
                pytest.fail(f"timed out waiting until {what}: {run.describe()}")
            time.sleep(POLL)

    if not first and rng.random() < 0.25:
        # Just after start-up: creating tables, opening files, the first batches.
        wait_until("the pipeline starts", lambda: "pipeline starting" in run.stderr_text)
        time.sleep(rng.uniform(0.0, 0.03))
    else:
        # As soon as the sink holds the rows of a random number of further checkpoints (the
        # first time at least a tenth of the feed, so that this kill lands mid-run); then
        # mostly at once (right after a commit), else a little later (amid the next ones).
        step = rng.randint(FEED_COUNT // 10, FEED_COUNT // 4) if first else rng.randint(1, STEP)
        rows = expected.count_below(min(before + step, FEED_COUNT))
        wait_until(f"the sink holds {rows} rows", lambda: sink.count() >= rows)
        time.sleep(rng.choice([0.0, 0.0, rng.uniform(0.0, 0.01)]))
    run.kill()
    code = run.proc.returncode
    assert code in (0, -signal.SIGKILL), run.describe()
    return code != 0


def check_rows(sink: Sink, expected: Expected, watermark: int, when: str) -> bool:
    """Check what ``sink.delivery`` promises about the sink's rows, given the saved watermark;
    returns whether the sink holds rows of checkpoints at or above it (a commit whose watermark
    was not saved: the next run writes those rows again)."""
    rows = sink.rows()
    held = Counter(rows)
    foreign = set(held) - expected.everything
    assert not foreign, f"{when}: rows not in the feed: {sorted(foreign)[:3]}"
    wanted = expected.below(watermark)
    if sink.delivery == "transactional":
        # The rows and the watermark commit together: nothing missing, nothing beyond.
        if sorted(rows) != wanted:
            extra = held - Counter(wanted)
            missing = Counter(wanted) - held
            pytest.fail(
                f"{when}: watermark {watermark} but {len(rows)} rows, expected {len(wanted)}; "
                f"{sum(extra.values())} extra (e.g. {sorted(extra)[:2]}), "
                f"{sum(missing.values())} missing (e.g. {sorted(missing)[:2]})"
            )
        return False
    missing = Counter(wanted) - held
    assert not missing, (
        f"{when}: {sum(missing.values())} rows below watermark {watermark} missing, "
        f"e.g. {sorted(missing)[:3]}"
    )
    if sink.delivery == "idempotent":
        duplicated = [row for row, n in held.items() if n > 1]
        assert not duplicated, f"{when}: {len(duplicated)} duplicated rows, e.g. {duplicated[:3]}"
    return any(row[0] >= watermark for row in held)


@dataclass
class Crashes:
    watermarks: list[int]  # the saved watermark after each kill
    ahead: int  # kills after which the sink held rows at or above the watermark (replayed)
    runs: int


def crash_until_done(tmp: Path, feed: Path, sink: Sink, expected: Expected, seed: int) -> Crashes:
    """Kill and restart ``indexer run`` until a run exits 0 (at most MAX_KILLS kills); checks
    the rows after each kill and at the end."""
    config = write_config(tmp / "config.toml", feed, sink)
    rng = random.Random(seed)
    crashes = Crashes(watermarks=[], ahead=0, runs=0)
    for attempt in range(MAX_KILLS + 1):
        run = start_run(tmp, config)
        crashes.runs += 1
        try:
            before = crashes.watermarks[-1] if crashes.watermarks else 0
            killed = attempt < MAX_KILLS and kill_at_random_moment(run, sink, expected, rng, before)
            code = None if killed else run.finish()
        finally:
            run.kill()
        if code is not None:
            assert code == 0, run.describe()
            assert run.stdout_text.endswith(f"{sink.pipeline}={FEED_COUNT}\n"), run.describe()
            break
        watermark = sink.watermark() or 0
        assert watermark >= before, f"the watermark fell from {before} to {watermark}"
        crashes.watermarks.append(watermark)
        when = f"after kill {len(crashes.watermarks)} (watermarks {crashes.watermarks})"
        crashes.ahead += check_rows(sink, expected, watermark, when)
    assert sink.watermark() == FEED_COUNT
    check_rows(sink, expected, FEED_COUNT, "at the end")
    rows = sink.rows()
    assert set(rows) == expected.everything
    if sink.delivery != "at-least-once":
        assert sorted(rows) == expected.below(FEED_COUNT)
    # Not vacuous: at least one kill interrupted the run in the middle of the feed.
    assert any(0 < w < FEED_COUNT for w in crashes.watermarks), crashes
    return crashes


# -- reading the sinks and the stores ----------------------------------------------------------


def _sqlite_fetch(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[Any] | None:
    """Rows of ``sql`` on ``db`` (read-write, so that a crashed WAL is recovered), or None when
    the file or the table does not exist yet."""
    if not db.exists():
        return None
    conn = sqlite3.connect(db, timeout=TIMEOUT)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return None
        raise
    finally:
        conn.close()


def sqlite_rows(db: Path, table: str) -> list[Row]:
    return [tuple(row) for row in _sqlite_fetch(db, ROW_SELECT.format(table)) or []]


def sqlite_count(db: Path, table: str) -> int:
    """Rows in ``table`` while the indexer writes (read-only; 0 until there is a table)."""
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=TIMEOUT)
        try:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.DatabaseError:  # no table yet, or the file is being created
        return 0


def sqlite_watermark(db: Path, pipeline: str) -> int | None:
    sql = "SELECT next_checkpoint FROM indexer_watermarks WHERE pipeline = ?"
    rows = _sqlite_fetch(db, sql, (pipeline,))
    return int(rows[0][0]) if rows else None


def sqlite_sink(tmp: Path, delivery: Delivery, *, own_file: bool) -> Sink:
    store = tmp / "progress.sqlite"
    db = tmp / "sink.sqlite" if own_file else store
    options: dict[str, Any] = {"table": "transactions", "columns": COLUMNS}
    if own_file:
        options["path"] = str(db)
    if delivery == "idempotent":
        options["key"] = ["digest"]
    return Sink(
        pipeline="transactions",
        store=f"sqlite:{store}",
        reducer={"class": "reducers.sqlite:SqliteSink", "options": options},
        delivery=delivery,
        rows=lambda: sqlite_rows(db, "transactions"),
        count=lambda: sqlite_count(db, "transactions"),
        watermark=lambda: sqlite_watermark(store, "transactions"),
    )


def jsonl_rows(path: Path, *, strict: bool) -> list[Row]:
    """Every line of the JsonlSink's files; unless ``strict``, a torn last line (a kill in the
    middle of a write, removed when the sink next opens the file) is left out."""
    decoder = msgspec.json.Decoder(dict[str, Any])
    rows: list[Row] = []
    for file in rotated_files(path):
        data = file.read_bytes()
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" after a final newline
        assert not (tail and (strict or file != path)), f"{file}: torn line {tail[:80]!r}"
        for line in lines:
            record = decoder.decode(line)
            rows.append(tuple(record[name] for name in COLUMNS))
    return rows


def jsonl_count(path: Path) -> int:
    count = 0
    for file in rotated_files(path):
        with contextlib.suppress(FileNotFoundError):  # rotated away meanwhile
            count += file.read_bytes().count(b"\n")
    return count


# -- the tests ---------------------------------------------------------------------------------


def test_sqlite_sink_on_the_store_file_is_exactly_once(
    tmp_path: Path, feed: Path, expected: Expected
) -> None:
    sink = sqlite_sink(tmp_path, "transactional", own_file=False)
    crashes = crash_until_done(tmp_path, feed, sink, expected, seed=101)
    assert len(crashes.watermarks) >= 3, crashes


def test_sqlite_sink_on_its_own_file_is_at_least_once(
    tmp_path: Path, feed: Path, expected: Expected
) -> None:
    sink = sqlite_sink(tmp_path, "at-least-once", own_file=True)
    crashes = crash_until_done(tmp_path, feed, sink, expected, seed=202)
    assert len(crashes.watermarks) >= 3, crashes


def test_sqlite_sink_on_its_own_file_with_a_key_is_idempotent(
    tmp_path: Path, feed: Path, expected: Expected
) -> None:
    sink = sqlite_sink(tmp_path, "idempotent", own_file=True)
    crashes = crash_until_done(tmp_path, feed, sink, expected, seed=303)
    assert len(crashes.watermarks) >= 3, crashes
    # Whether a kill fell between a commit and its watermark save (rows written again by the
    # next run) is up to timing (about half of them do; crashes.ahead counts them): replay a
    # known range on purpose too, by lowering the watermark, and still every row is there once.
    replay_from = random.Random(303).randrange(1, FEED_COUNT)
    config = tmp_path / "config.toml"
    args = ["reset", "-c", config, "--pipeline", sink.pipeline, "--to", replay_from]
    reset = run_indexer(*args, "--force", cwd=tmp_path)
    assert reset.returncode == 0, reset.stderr
    assert sink.watermark() == replay_from
    run = start_run(tmp_path, config)
    assert run.finish() == 0, run.describe()
    assert sink.watermark() == FEED_COUNT
    assert sorted(sink.rows()) == expected.below(FEED_COUNT)


def test_jsonl_sink_is_at_least_once(tmp_path: Path, feed: Path, expected: Expected) -> None:
    path = tmp_path / "out" / "transactions.jsonl"
    store = tmp_path / "progress.sqlite"
    sink = Sink(
        pipeline="transactions",
        store=f"sqlite:{store}",
        # Small files: the kills also hit rotations.
        reducer={
            "class": "reducers.jsonl:JsonlSink",
            "options": {"path": str(path), "max_file_bytes": 32 * 1024, "fields": list(COLUMNS)},
        },
        delivery="at-least-once",
        rows=lambda: jsonl_rows(path, strict=False),
        count=lambda: jsonl_count(path),
        watermark=lambda: sqlite_watermark(store, "transactions"),
    )
    crashes = crash_until_done(tmp_path, feed, sink, expected, seed=404)
    assert len(crashes.watermarks) >= 3, crashes
    jsonl_rows(path, strict=True)  # no torn line is left behind
    assert len(rotated_files(path)) > 1


class Postgres:
    """A synchronous view of the test server for the test's own queries."""

    def __init__(self, dsn: str) -> None:
        import asyncpg

        self._asyncpg = asyncpg
        self._runner = asyncio.Runner()
        self._conn = self._runner.run(asyncpg.connect(dsn))

    def fetch(self, sql: str, *args: Any) -> list[Any] | None:
        """Rows of ``sql``, or None when its table does not exist yet."""
        try:
            return list(self._runner.run(self._conn.fetch(sql, *args)))
        except self._asyncpg.UndefinedTableError:
            return None

    def close(self) -> None:
        try:
            self._runner.run(self._conn.close())
        finally:
            self._runner.close()


@pytest.fixture
def postgres(postgres_dsn: str) -> Iterator[Postgres]:
    db = Postgres(postgres_dsn)
    try:
        yield db
    finally:
        db.close()


def test_postgres_sink_on_the_store_database_is_exactly_once(
    tmp_path: Path,
    feed: Path,
    expected: Expected,
    postgres_dsn: str,
    pg_schema: str,
    postgres: Postgres,
) -> None:
    # The store's tables and the sink's live in the test's own schema, dropped afterwards.
    pipeline = "transactions"
    table = f'"{pg_schema}".transactions'
    watermark_sql = (
        f'SELECT next_checkpoint FROM "{pg_schema}".indexer_watermarks WHERE pipeline = $1'
    )

    def watermark() -> int | None:
        rows = postgres.fetch(watermark_sql, pipeline)
        return int(rows[0][0]) if rows else None

    sink = Sink(
        pipeline=pipeline,
        store=postgres_dsn,
        reducer={
            "class": "reducers.postgres:PostgresSink",
            "options": {
                "table": "transactions",
                "schema": pg_schema,
                "dsn": postgres_dsn,  # the store's database: writes share its transaction
                "columns": COLUMNS,
            },
        },
        delivery="transactional",
        rows=lambda: [tuple(r) for r in postgres.fetch(ROW_SELECT.format(table)) or []],
        count=lambda: int((postgres.fetch(f"SELECT count(*) FROM {table}") or [[0]])[0][0]),
        watermark=watermark,
        schema=pg_schema,
    )
    crashes = crash_until_done(tmp_path, feed, sink, expected, seed=505)
    assert len(crashes.watermarks) >= 3, crashes

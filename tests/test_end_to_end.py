"""End to end: the framework run as a real program, stopped by real signals, killed, and fed
corrupt files. See ``tests/programs/feed_indexer.py`` for the program and its output."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import harness
import pytest
from harness import Background, parse_events

from indexer.sources import SyntheticSource, write_checkpoint_file, write_feed

PROGRAM = Path(__file__).parent / "programs" / "feed_indexer.py"
PIPELINE = "feed_rows"

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


class Program(Background):
    """A running ``tests/programs/feed_indexer.py`` (see its docstring for its output)."""

    def __init__(self, feed: Path, db: Path, *args: str) -> None:
        super().__init__([sys.executable, PROGRAM, "--feed", feed, "--db", db, *args])

    def watermarks(self) -> dict[str, int]:
        """The JSON dict the program prints last on success."""
        return json.loads(self.stdout[-1])

    def processed(self) -> list[int]:
        lines = [line for line in self.stdout if line.startswith("processed ")]
        assert len(lines) == 1, self.stdout
        return json.loads(lines[0].removeprefix("processed "))

    def resume(self) -> int:
        lines = [line for line in self.stdout if line.startswith("resume ")]
        assert len(lines) == 1, self.stdout
        return int(lines[0].removeprefix("resume "))

    def log_events(self, event: str) -> list[dict[str, Any]]:
        """The framework's log records of ``event`` (the program's last line may be another)."""
        records = parse_events([line for line in self.stderr if line.startswith("{")])
        return [record for record in records if record["event"] == event]

    def wait_for_commit(self, db: Path) -> int:
        """Wait until the program has committed a first batch; the saved watermark."""
        return self.wait_until("a committed batch", lambda: saved_watermark(db) or 0)


def make_feed(directory: Path, count: int, seed: int = 7) -> Path:
    written = asyncio.run(write_feed(SyntheticSource(seed=seed), directory, count=count))
    assert written == count
    return directory


def write_range(directory: Path, start: int, stop: int, seed: int = 7) -> None:
    """Write checkpoints ``start..stop-1`` one file at a time (each atomically)."""
    source = SyntheticSource(seed=seed)
    for n in range(start, stop):
        write_checkpoint_file(directory, source.checkpoint_at(n))


def saved_watermark(db: Path) -> int | None:
    """The watermark the program saved, or None (nothing saved yet)."""
    return harness.saved_watermark(db, PIPELINE)


def committed_rows(db: Path) -> list[int]:
    """Every row's checkpoint, in insertion order (duplicates kept)."""
    conn = sqlite3.connect(db)
    try:
        return [n for (n,) in conn.execute("SELECT checkpoint FROM rows ORDER BY rowid")]
    finally:
        conn.close()


def assert_consistent(db: Path) -> int:
    """Rows are exactly 0..watermark-1, once each, in order; returns the watermark."""
    watermark = saved_watermark(db) or 0
    assert committed_rows(db) == list(range(watermark))
    return watermark


@pytest.fixture
def feed(tmp_path: Path) -> Path:
    return tmp_path / "feed"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "progress.sqlite"


# -- graceful stop by signal ----------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_a_following_run_gracefully(feed: Path, db: Path, signum: int) -> None:
    count = 1000  # at 0.01 s a checkpoint, 4 at a time, the feed takes 2.5 s: the stop is mid-run
    make_feed(feed, count)
    program = Program(feed, db, "--follow", "--delay", "0.01", "--concurrency", "4")
    program.wait_for_commit(db)
    program.signal(signum)
    signalled = time.monotonic()
    rc = program.finish()
    elapsed = time.monotonic() - signalled
    assert rc == 0, program.describe()
    assert elapsed < 5.0, f"graceful stop took {elapsed:.2f}s"
    watermark = saved_watermark(db)
    assert watermark is not None
    assert 0 < watermark < count
    assert program.watermarks() == {PIPELINE: watermark}
    assert committed_rows(db) == list(range(watermark))
    # In-flight work was finished and committed, none was lost or processed twice.
    assert program.processed() == list(range(watermark))
    assert (
        len(program.log_events("stopping: finishing in-flight work (signal again to abort)")) == 1
    )


def test_restart_after_sigterm_resumes_from_the_saved_watermark(feed: Path, db: Path) -> None:
    count = 600
    make_feed(feed, count, seed=11)
    first = Program(feed, db, "--follow", "--delay", "0.01", "--concurrency", "4")
    first.wait_for_commit(db)
    first.signal(signal.SIGTERM)
    assert first.finish() == 0, first.describe()
    stopped_at = assert_consistent(db)
    assert 0 < stopped_at < count
    assert first.watermarks() == {PIPELINE: stopped_at}

    second = Program(
        feed, db, "--no-follow", "--last-checkpoint", str(count - 1), "--concurrency", "4"
    )
    assert second.finish() == 0, second.describe()
    assert second.resume() == stopped_at
    [starting] = second.log_events("pipeline starting")
    assert starting["resume_from"] == stopped_at
    assert starting["saved_watermark"] == stopped_at
    assert second.processed() == list(range(stopped_at, count))
    assert second.watermarks() == {PIPELINE: count}
    assert saved_watermark(db) == count
    assert committed_rows(db) == list(range(count))


def test_second_signal_aborts_at_once_without_corrupting_the_database(feed: Path, db: Path) -> None:
    make_feed(feed, 100)
    block_from = 20
    program = Program(
        feed,
        db,
        "--follow",
        "--concurrency",
        "2",
        "--block-forever",
        "--block-from",
        str(block_from),
    )
    program.wait_for_line("started")
    # Checkpoints 0..19 complete and are committed (two full batches); 20 and 21 never finish.
    program.wait_until(f"the watermark {block_from}", lambda: saved_watermark(db) == block_from)
    program.signal(signal.SIGINT)
    program.wait_for_event("stopping: finishing in-flight work (signal again to abort)")
    assert program.proc.poll() is None, "the first signal must wait for the blocked work"
    program.signal(signal.SIGINT)
    aborted = time.monotonic()
    rc = program.finish()
    elapsed = time.monotonic() - aborted
    assert rc == 1, program.describe()
    assert elapsed < 2.0, f"abort took {elapsed:.2f}s"
    assert program.stderr[-1] == "aborted: aborted by a second stop signal", program.describe()
    assert not any(line.startswith("processed ") for line in program.stdout)
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute(
            "SELECT pipeline, next_checkpoint FROM indexer_watermarks"
        ).fetchall() == [(PIPELINE, block_from)]
    finally:
        conn.close()
    assert committed_rows(db) == list(range(block_from))


def test_signal_while_draining_a_finite_feed_stops_early(feed: Path, db: Path) -> None:
    count = 200  # read at once (the window holds 1024); processing takes 2 s, 2 at a time
    make_feed(feed, count)
    program = Program(feed, db, "--no-follow", "--delay", "0.02", "--concurrency", "2")
    program.wait_for_event("source exhausted")
    program.wait_for_commit(db)
    program.signal(signal.SIGTERM)
    assert program.finish() == 0, program.describe()
    watermark = saved_watermark(db)
    assert watermark is not None
    assert 0 < watermark < count
    assert program.watermarks() == {PIPELINE: watermark}
    assert committed_rows(db) == list(range(watermark))
    assert program.processed() == list(range(watermark))


def test_following_run_tails_new_files_waits_at_a_gap_and_ends_at_last_checkpoint(
    feed: Path, db: Path
) -> None:
    make_feed(feed, 20)
    program = Program(feed, db, "--follow", "--last-checkpoint", "39", "--concurrency", "4")
    program.wait_for_line("started")
    write_range(feed, 21, 45)  # 20 is missing; 40.. lie past the last checkpoint
    program.wait_for_event("gap in feed")
    program.wait_until("checkpoints 0..19 committed", lambda: saved_watermark(db) == 20)
    time.sleep(0.2)  # a while in which nothing past the gap may be committed
    assert program.proc.poll() is None, program.describe()
    assert saved_watermark(db) == 20  # nothing past the gap is committed
    write_range(feed, 20, 21)
    assert program.finish() == 0, program.describe()
    assert program.watermarks() == {PIPELINE: 40}
    assert saved_watermark(db) == 40
    assert committed_rows(db) == list(range(40))
    assert program.processed() == list(range(40))
    [gap] = program.log_events("gap in feed")
    assert (gap["missing"], gap["next_present"]) == (20, 21)


# -- crashes --------------------------------------------------------------------------------


def test_sigkill_at_random_moments_keeps_exactly_once(feed: Path, db: Path) -> None:
    count = 400  # at 0.02 s a checkpoint, 4 at a time: 2 s of work, far more than the 5 kills
    make_feed(feed, count, seed=3)
    rng = random.Random(20240601)
    last = ["--no-follow", "--last-checkpoint", str(count - 1), "--concurrency", "4"]
    watermarks = []
    for kill in range(5):
        program = Program(feed, db, *last, "--delay", "0.02")
        program.wait_for_line("started")
        if kill == 0:  # so that the kills cannot all land before anything was committed
            program.wait_for_commit(db)
        time.sleep(rng.uniform(0.0, 0.15))
        program.signal(signal.SIGKILL)
        assert program.finish() == -signal.SIGKILL, program.describe()
        # Rows and watermark commit together: consistent after every crash.
        watermarks.append(assert_consistent(db))
    assert watermarks == sorted(watermarks)
    assert 0 < watermarks[-1] < count, watermarks

    final = Program(feed, db, *last)
    assert final.finish() == 0, final.describe()
    assert final.resume() == watermarks[-1]
    assert final.processed() == list(range(watermarks[-1], count))
    assert final.watermarks() == {PIPELINE: count}
    assert saved_watermark(db) == count
    assert committed_rows(db) == list(range(count))


# -- bad feeds ------------------------------------------------------------------------------


def test_corrupt_file_stops_the_run_after_committing_everything_before_it(
    feed: Path, db: Path
) -> None:
    make_feed(feed, 60)
    bad = feed / "37.chk"
    bad.write_bytes(bad.read_bytes()[:10])
    args = ("--no-follow", "--last-checkpoint", "59", "--concurrency", "4")
    program = Program(feed, db, *args)
    assert program.finish() == 1, program.describe()
    last_line = program.stderr[-1]
    assert last_line.startswith("error: "), program.describe()
    assert f"{feed}/37.chk" in last_line
    assert "checkpoint 37 " in last_line
    assert not any(line.startswith("Traceback") for line in program.stderr)
    assert saved_watermark(db) == 37
    assert committed_rows(db) == list(range(37))

    # Run again unchanged: the same error, nothing more committed.
    again = Program(feed, db, *args)
    assert again.finish() == 1, again.describe()
    assert again.resume() == 37
    assert again.stderr[-1] == last_line
    assert committed_rows(db) == list(range(37))

    # Repair the file: the next run resumes at 37 and finishes.
    write_range(feed, 37, 38)
    fixed = Program(feed, db, *args)
    assert fixed.finish() == 0, fixed.describe()
    assert fixed.resume() == 37
    assert fixed.processed() == list(range(37, 60))
    assert fixed.watermarks() == {PIPELINE: 60}
    assert committed_rows(db) == list(range(60))


def test_unreadable_feed_file_is_a_one_line_error_naming_it(feed: Path, db: Path) -> None:
    make_feed(feed, 60)
    (feed / "37.chk").unlink()
    (feed / "37.chk").mkdir()  # opens, but cannot be read
    program = Program(feed, db, "--no-follow", "--last-checkpoint", "59", "--concurrency", "4")
    rc = program.finish()
    # Everything before the unreadable file is committed.
    assert saved_watermark(db) == 37, program.describe()
    assert committed_rows(db) == list(range(37))
    assert rc == 1, program.describe()
    assert program.stderr[-1].startswith("error: "), program.describe()
    assert f"{feed}/37.chk: cannot read checkpoint 37" in program.stderr[-1]


def test_file_holding_another_checkpoint_stops_the_run(feed: Path, db: Path) -> None:
    make_feed(feed, 40)
    (feed / "15.chk").unlink()
    shutil.copyfile(feed / "12.chk", feed / "15.chk")
    program = Program(feed, db, "--no-follow", "--last-checkpoint", "39", "--concurrency", "4")
    assert program.finish() == 1, program.describe()
    assert program.stderr[-1] == f"error: {feed}/15.chk: holds checkpoint 12, expected 15"
    assert saved_watermark(db) == 15
    assert committed_rows(db) == list(range(15))


def test_non_numeric_file_names_are_skipped(feed: Path, db: Path) -> None:
    count = 30
    make_feed(feed, count)
    odd = ["notes.txt", "abc.chk", "007.chk", "5.chk.bak"]
    for name in odd:
        (feed / name).write_bytes(b"not a checkpoint")
    program = Program(feed, db, "--no-follow", "--concurrency", "4")
    assert program.finish() == 0, program.describe()
    assert program.watermarks() == {PIPELINE: count}
    assert program.processed() == list(range(count))
    assert saved_watermark(db) == count
    assert committed_rows(db) == list(range(count))
    warned = sorted(
        str(record["file"]) for record in program.log_events("ignoring file not named {n}.chk")
    )
    assert warned == sorted(odd)
    assert os.path.exists(feed / "notes.txt")  # skipped, not touched

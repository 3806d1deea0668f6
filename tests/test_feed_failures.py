"""What a user meets on day one when the feed is not what the run expects, through the real
``indexer`` command: a run that ends short of its last checkpoint fails, a file its producer is
still writing is read again, odd names are warned about, and a chunked run waiting for
checkpoints that are not there yet says so."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from harness import Background, parse_events, run_indexer, saved_watermark

from indexer import FeedEndedEarly, IndexerExecutor, Worker, WorkerPool
from indexer.checkpoint import Checkpoint, encode_checkpoint
from indexer.errors import failure_exit
from indexer.sources import MemorySource, SyntheticSource, write_checkpoint_file, write_feed
from indexer.testing import make_checkpoints

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"
PIPELINE = "transactions"  # the example's pipeline

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def make_feed(directory: Path, count: int) -> Path:
    assert asyncio.run(write_feed(SyntheticSource(), directory, count=count)) == count
    return directory


def checkpoint_bytes(n: int) -> bytes:
    return encode_checkpoint(SyntheticSource().checkpoint_at(n))


def write_config(tmp_path: Path, **source: Any) -> Path:
    """config.example.toml with the feed ``tmp_path/feed``, the store ``tmp_path/index.db``
    and ``source`` keys."""
    with EXAMPLE.open("rb") as file:
        data = tomllib.load(file)
    data["source"].update(feed=str(tmp_path / "feed"), **source)
    data["progress"]["store"] = f"sqlite:{tmp_path / 'index.db'}"
    path = tmp_path / "config.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def run(config: Path, *args: Any) -> Any:
    return run_indexer("run", "-c", config, "--no-metrics", "--log-format", "json", *args)


def events(stderr: str, event: str) -> list[dict[str, Any]]:
    lines = [line for line in stderr.splitlines() if line.startswith("{")]
    return [record for record in parse_events(lines) if record["event"] == event]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith("{")]


def watermark(tmp_path: Path) -> int | None:
    return saved_watermark(tmp_path / "index.db", PIPELINE)


# -- a run that ends before its last checkpoint -------------------------------------------------


def test_a_bounded_run_that_meets_a_gap_fails_naming_the_missing_checkpoint(
    tmp_path: Path,
) -> None:
    (make_feed(tmp_path / "feed", 60) / "50.chk").unlink()
    config = write_config(tmp_path, follow=False)
    result = run(config, "--last-checkpoint", 59)
    assert result.returncode == 1, result.stderr
    assert error_lines(result.stderr) == [
        "indexer: error: the feed ended before last_checkpoint 59: checkpoint 50 is missing "
        "(watermarks: transactions=50)"
    ]
    assert result.stdout == ""
    assert len(events(result.stderr, "gap in feed")) == 1
    assert watermark(tmp_path) == 50  # everything before the gap is committed

    # Without a last checkpoint the feed's end is the run's end: done, exit 0.
    again = run(config)
    assert again.returncode == 0, again.stderr
    assert watermark(tmp_path) == 50


def test_a_chunked_bounded_run_that_meets_a_gap_fails_too(tmp_path: Path) -> None:
    (make_feed(tmp_path / "feed", 60) / "50.chk").unlink()
    config = write_config(tmp_path, follow=False)
    result = run(config, "--last-checkpoint", 59, "--processes", 2, "--chunk-size", 20)
    assert result.returncode == 1, result.stderr
    message = (
        "indexer: error: the feed ended before last_checkpoint 59: checkpoint 50 is missing "
        "(chunk 2, checkpoints 40..59, of pipeline 'transactions')"
    )
    # Each process that met the gap says so: the one that met it first, maybe the other too.
    assert set(error_lines(result.stderr)) == {message}, result.stderr
    assert watermark(tmp_path) == 50


def test_a_chunked_run_without_last_checkpoint_ends_with_a_finite_feed(tmp_path: Path) -> None:
    make_feed(tmp_path / "feed", 50)
    config = write_config(tmp_path, follow=False)
    result = run(config, "--processes", 2, "--chunk-size", 20)
    assert result.returncode == 0, result.stderr
    assert error_lines(result.stderr) == []
    assert watermark(tmp_path) == 50
    assert events(result.stderr, "the feed ended: claiming no more chunks")


class Noop(Worker[Checkpoint, None]):
    async def process_checkpoint(self, checkpoint: Checkpoint) -> None:
        return None


async def test_the_library_raises_feed_ended_early_after_committing() -> None:
    executor = IndexerExecutor(handle_signals=False)
    executor.register(WorkerPool(Noop(), name="noop"))
    source = MemorySource(make_checkpoints(10))
    with pytest.raises(FeedEndedEarly) as raised:
        await executor.run(source, last_checkpoint=19)
    assert (raised.value.missing, raised.value.last) == (10, 19)
    assert raised.value.watermarks == {"noop": 10}
    assert await executor.progress_store.load("noop") == 10
    assert failure_exit(raised.value) == (1, str(raised.value))
    assert await executor.run(source, last_checkpoint=9) == {"noop": 10}  # reached: no error


# -- a file its producer is still writing -------------------------------------------------------


def test_a_file_written_in_place_is_read_again_until_whole(tmp_path: Path) -> None:
    feed = make_feed(tmp_path / "feed", 20)
    data = checkpoint_bytes(20)
    (feed / "20.chk").write_bytes(data[: len(data) // 2])  # the producer's first half
    config = write_config(tmp_path, follow=True)
    program = Background.indexer(
        "run", "-c", config, "--no-metrics", "--log-format", "json", "--last-checkpoint", 21
    )
    seen = program.wait_for_event("feed file does not decode yet: reading it again")
    assert seen["checkpoint"] == 20 and seen["file"] == str(feed / "20.chk")
    with (feed / "20.chk").open("ab") as file:  # the second half, after the run saw the first
        file.write(data[len(data) // 2 :])
    write_checkpoint_file(feed, SyntheticSource().checkpoint_at(21))
    assert program.finish() == 0, program.describe()
    assert watermark(tmp_path) == 22


def test_a_corrupt_file_with_newer_files_after_it_halts_at_once(tmp_path: Path) -> None:
    feed = make_feed(tmp_path / "feed", 30)
    (feed / "20.chk").write_bytes(checkpoint_bytes(20)[:10])
    # A grace far longer than the run may take: only "at once" passes.
    config = write_config(tmp_path, follow=True, partial_file_grace=3600.0)
    result = run(config)
    assert result.returncode == 1, result.stderr
    [line] = error_lines(result.stderr)
    assert line.startswith(f"indexer: error: {feed / '20.chk'}: checkpoint 20 cannot be decoded")
    assert not events(result.stderr, "feed file does not decode yet: reading it again")
    assert watermark(tmp_path) == 20


def test_a_newest_file_that_stays_truncated_halts_after_the_grace(tmp_path: Path) -> None:
    feed = make_feed(tmp_path / "feed", 20)
    (feed / "20.chk").write_bytes(checkpoint_bytes(20)[:10])
    config = write_config(tmp_path, follow=True, partial_file_grace=0.3)
    result = run(config)
    assert result.returncode == 1, result.stderr
    [line] = error_lines(result.stderr)
    assert line.startswith(f"indexer: error: {feed / '20.chk'}: checkpoint 20 cannot be decoded")
    assert len(events(result.stderr, "feed file does not decode yet: reading it again")) == 1
    assert watermark(tmp_path) == 20

    # Without follow the feed is read as it is: the same file halts at once.
    finite = write_config(tmp_path, follow=False, partial_file_grace=3600.0)
    result = run(finite)
    assert result.returncode == 1, result.stderr
    assert not events(result.stderr, "feed file does not decode yet: reading it again")


# -- odd names ------------------------------------------------------------------------------


ODD = {
    "050.chk": "checkpoint 50 is read from 50.chk only",
    "+51.chk": "checkpoint 51 is read from 51.chk only",
    "abc.chk": "the name before .chk is not a checkpoint number",
    "notes.txt": "not a .chk file",
}


def odd_warnings(stderr: str) -> dict[str, str]:
    warned = events(stderr, "ignoring file not named {n}.chk")
    assert all(record["level"] == "warning" for record in warned)
    names = [record["file"] for record in warned]
    assert len(names) == len(set(names)), names  # once per name
    return {record["file"]: record["reason"] for record in warned}


def test_odd_names_are_warned_about_once_each_with_the_reason(tmp_path: Path) -> None:
    feed = make_feed(tmp_path / "feed", 60)
    for name in ODD:
        (feed / name).write_bytes(b"not a checkpoint")
    (feed / ".60.chk.tmp").write_bytes(b"a write in progress: no warning")

    # A run that reaches the feed's end lists it there.
    listed = run(write_config(tmp_path, follow=False))
    assert listed.returncode == 0, listed.stderr
    assert odd_warnings(listed.stderr) == ODD

    # So does one that prunes what it indexed, though it never misses a file.
    pruning = tmp_path / "pruning"
    pruning.mkdir()
    (pruning / "feed").symlink_to(feed)
    config = write_config(pruning, follow=False, delete_below_watermark=True)
    pruned = run(config, "--last-checkpoint", 59)
    assert pruned.returncode == 0, pruned.stderr
    assert odd_warnings(pruned.stderr) == ODD
    assert sorted(os.listdir(feed)) == sorted([*ODD, ".60.chk.tmp"])  # odd files untouched


# -- a chunked run waiting for checkpoints not in the feed ----------------------------------


def test_a_chunked_run_waiting_for_checkpoints_past_the_feed_says_so(tmp_path: Path) -> None:
    make_feed(tmp_path / "feed", 20)
    config = write_config(tmp_path, follow=True)
    program = Background.indexer(
        "run", "-c", config, "--no-metrics", "--log-format", "json",
        "--processes", 2, "--chunk-size", 10, "--last-checkpoint", 99,
    )  # fmt: skip

    def waiting() -> list[dict[str, Any]]:
        return events(program.stderr_text, "waiting for checkpoints not in the feed yet")

    # Chunks 0 and 1 hold the feed; each process then claims one past it and waits there.
    found = program.wait_until("both processes waiting", lambda: len(waiting()) == 2 and waiting())
    assert sorted(record["waiting_for"] for record in found) == [20, 30]
    assert {record["feed_latest"] for record in found} == {19}
    assert {(record["chunk"], record["chunk_last"]) for record in found} == {(2, 29), (3, 39)}
    assert program.stop(signal.SIGTERM) == 0, program.describe()
    assert len(waiting()) == 2  # once each, not once a poll
    assert watermark(tmp_path) == 20


def test_a_negative_grace_is_refused_under_its_key(tmp_path: Path) -> None:
    config = write_config(tmp_path, partial_file_grace=-1.0)
    result = run_indexer("config", "check", "-c", config)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"indexer: error: {config}: source.partial_file_grace must be >= 0, got -1.0"
    ]

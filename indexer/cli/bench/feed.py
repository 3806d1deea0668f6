"""feed: a full ``indexer run`` over a directory of ``.chk`` files with a no-op worker, against
a bare loop that reads and decodes the same files in order, page cache warm for both; and
feed-on-disk (informational, Linux): the same over files dropped from the page cache."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from ...checkpoint import Checkpoint, CheckpointDecoder
from ..config import load_config
from ..run import run_indexer
from ._common import Result, write_bench_feed


def bare_read_decode(directory: Path, count: int) -> float:
    """What one core can do at best: os.open/os.read/os.close and a typed decode per file."""
    decoder: CheckpointDecoder[Checkpoint] = CheckpointDecoder()
    prefix = f"{directory}{os.sep}"
    started = time.perf_counter()
    for n in range(count):
        fd = os.open(f"{prefix}{n}.chk", os.O_RDONLY)
        try:
            data = os.read(fd, 1 << 16)  # as the reader does: 1 MiB buffers would be mmapped
        finally:
            os.close(fd)
        decoder.decode(data, sequence_number=n, origin="")
    return time.perf_counter() - started


def evict(directory: Path, count: int) -> bool:
    """Drop the feed's files from the page cache (they must be clean: ``os.sync`` first);
    False where that cannot be done or checked (not Linux, or the files stayed in memory)."""
    if not hasattr(os, "posix_fadvise") or not hasattr(os, "RWF_NOWAIT"):
        return False
    for n in range(count):
        fd = os.open(directory / f"{n}.chk", os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    fd = os.open(directory / f"{count - 1}.chk", os.O_RDONLY)  # read last by both sides
    try:
        os.preadv(fd, [bytearray(1)], 0, os.RWF_NOWAIT)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def indexer_run(directory: Path, count: int, event_loop: str = "auto") -> float:
    config = load_config(
        None,
        {
            "source.feed": str(directory),
            "source.follow": False,
            "progress.store": "memory",
            "metrics.enabled": False,
            "logging.progress": False,
            "run.last_checkpoint": count - 1,
            "run.event_loop": event_loop,
            "pipelines": {"noop": {"worker": "indexer.cli.bench._common:Noop", "concurrency": 16}},
        },
    )
    started = time.perf_counter()
    run_indexer(config)
    return time.perf_counter() - started


def best_times(
    feed: Path, count: int, rounds: int, event_loop: str, on_disk: bool = False
) -> tuple[float, float] | None:
    """The best of ``rounds`` timings of the bare loop and of ``indexer run``; with
    ``on_disk`` the files are dropped from the page cache before each (None where they
    cannot be)."""
    bare = framework = float("inf")
    for _ in range(rounds):
        if on_disk and not evict(feed, count):
            return None
        bare = min(bare, bare_read_decode(feed, count))
        if on_disk:
            evict(feed, count)
        framework = min(framework, indexer_run(feed, count, event_loop))
    return bare, framework


def run(quick: bool, directory: Path | None = None, event_loop: str = "auto") -> list[Result]:
    count = 5_000 if quick else 100_000
    on_disk = 2_000 if quick else 20_000
    with tempfile.TemporaryDirectory(prefix="indexer-bench-") as tmp:
        feed = (directory or Path(tmp)) / f"feed-{count}"
        write_bench_feed(feed, count)
        os.sync()  # no writeback of the new files while either side is timed
        bare_read_decode(feed, count)  # warm the page cache
        indexer_run(feed, count, event_loop)  # and the framework's first run (imports, arenas)
        times = {
            "feed": best_times(feed, count, 1 if quick else 3, event_loop),
            "feed-on-disk": best_times(feed, on_disk, 1 if quick else 2, event_loop, on_disk=True),
        }
    results = []
    for (name, measured), files in zip(times.items(), (count, on_disk), strict=True):
        if measured is None:
            continue  # the files cannot be dropped from the page cache here
        bare, framework = measured
        results.append(
            Result(
                name,
                figure=files / framework,
                reference=files / bare,
                unit="checkpoints/s",
                bar=0.8 if name == "feed" else None,  # on disk: informational
                details={"files": files, "worker": "no-op", "concurrency": 16},
            )
        )
    return results

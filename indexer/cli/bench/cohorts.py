"""cohorts: pipelines of different speeds in one run, against each pipeline alone.

- ``cohorts``: a no-op pipeline reaching its 20,000th checkpoint beside a pipeline whose
  worker awaits 10 ms (concurrency 8), against the no-op alone (bar 0.8). Details: checkpoints
  read from the feed per checkpoint for two no-op pipelines together (about 1: one read).
- ``cohort-tip``: a pipeline at the tip of a feed directory of 100,000 files that grows by
  2,000 files a second: its mean lag (checkpoints written and not yet processed) while a
  pipeline added at 0 catches up beside it, against its lag alone over the same time
  (bar: at most 1.2x). Details: what the new pipeline read per checkpoint once it
  caught up and joined the tip's read.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from ..._loop import run_on
from ...checkpoint import Checkpoint
from ...executor import IndexerExecutor
from ...pipeline import WorkerPool
from ...progress import MemoryProgressStore
from ...sources import LocalDirectorySource
from ...worker import Worker
from ._common import RenumberedSource, Result, best_interleaved, templates, write_bench_feed

SLOW_LATENCY = 0.010
SLOW_CONCURRENCY = 8
GROWTH_PER_SECOND = 2000


class Counting(Worker[Checkpoint, None]):
    """Does nothing but note how many it did and the highest number, and when it reached
    ``target`` checkpoints."""

    def __init__(self, target: int | None = None) -> None:
        self.target = target
        self.count = 0
        self.highest = -1
        self.reached = asyncio.Event()

    async def process_checkpoint(self, checkpoint: Checkpoint) -> None:
        self.count += 1
        if checkpoint.sequence_number > self.highest:
            self.highest = checkpoint.sequence_number
        if self.count == self.target:
            self.reached.set()


class Sleeper(Worker[Checkpoint, None]):
    async def process_checkpoint(self, checkpoint: Checkpoint) -> None:
        await asyncio.sleep(SLOW_LATENCY)


def _executor(store: MemoryProgressStore | None = None) -> IndexerExecutor:
    return IndexerExecutor(store, handle_signals=False, feed_poll_interval=None)


async def _noop_seconds(count: int, beside: Worker[Checkpoint, Any] | None) -> float:
    """How long a no-op pipeline takes to process ``count`` checkpoints (beside ``beside``)."""
    executor = _executor()
    noop = Counting(count)
    executor.register(WorkerPool(noop, name="noop"))
    if beside is not None:
        executor.register(WorkerPool(beside, name="beside", concurrency=SLOW_CONCURRENCY))
    started = time.perf_counter()
    running = asyncio.create_task(executor.run(RenumberedSource()))
    await noop.reached.wait()
    took = time.perf_counter() - started
    executor.request_stop()
    await running
    return took


async def _reads_together(count: int) -> float:
    """Checkpoints read from the feed per checkpoint, two no-op pipelines over ``count``."""
    executor = _executor()
    executor.register(WorkerPool(Counting(), name="a"))
    executor.register(WorkerPool(Counting(), name="b"))
    await executor.run(RenumberedSource(count))
    return executor.job.feed.checkpoints_read / count


def run_pace(quick: bool, event_loop: str = "auto") -> list[Result]:
    count = 5000 if quick else 20_000
    best = best_interleaved(
        2 if quick else 3,
        {
            "alone": lambda: run_on(event_loop, _noop_seconds(count, None)),
            "beside": lambda: run_on(event_loop, _noop_seconds(count, Sleeper())),
        },
    )
    reads = run_on(event_loop, _reads_together(count))
    return [
        Result.throughput(
            "cohorts",
            count,
            best["beside"],
            best["alone"],
            bar=0.8,
            details={
                "checkpoints": count,
                "beside": f"a worker awaiting {SLOW_LATENCY * 1000:g} ms, "
                f"concurrency {SLOW_CONCURRENCY}",
                "read_per_checkpoint_two_together": round(reads, 3),
            },
        )
    ]


def _produce(feed: Path, first: int, seconds: float) -> None:
    """A producer in a process of its own: appends files to the feed from ``first`` on,
    ``GROWTH_PER_SECOND`` of them a second for ``seconds``, each written then renamed."""
    base = templates()
    encode = msgspec.msgpack.Encoder().encode
    replace = msgspec.structs.replace
    started = time.perf_counter()
    n = first
    while (elapsed := time.perf_counter() - started) < seconds:
        due = first + int(elapsed * GROWTH_PER_SECOND)
        while n < due:
            temporary = feed / f".{n}.chk.tmp"
            temporary.write_bytes(encode(replace(base[n % len(base)], sequence_number=n)))
            temporary.rename(feed / f"{n}.chk")
            n += 1
        time.sleep(0.002)


async def _tip_lag(feed: Path, tip: int, seconds: float, newcomer: bool) -> dict[str, Any]:
    """The tip pipeline's mean lag while the feed grows for ``seconds`` (with a newcomer at 0
    or not), and what was read per checkpoint of the feed."""
    store = MemoryProgressStore()
    await store.save("tip", tip)
    executor = _executor(store)
    at_tip, new = Counting(), Counting()
    executor.register(WorkerPool(at_tip, name="tip"))
    if newcomer:
        executor.register(WorkerPool(new, name="new"))
    source = LocalDirectorySource(feed, poll_interval=0.02)
    producer = multiprocessing.get_context("spawn").Process(
        target=_produce, args=(feed, tip, seconds)
    )
    producer.start()
    running = asyncio.create_task(executor.run(source))
    lags: list[int] = []
    written = tip
    started, caught_up = time.perf_counter(), None
    while producer.is_alive():
        await asyncio.sleep(0.01)
        written = _written(feed, written)
        if at_tip.highest >= 0:
            lags.append(written - 1 - at_tip.highest)
        if newcomer and caught_up is None and 0 <= at_tip.highest <= new.highest:
            caught_up = time.perf_counter() - started
    producer.join()
    executor.request_stop()
    await running
    await source.close()
    written = _written(feed, written)
    return {
        "lag": sum(lags) / max(1, len(lags)),
        "new_processed": new.count,
        "new_behind": written - 1 - new.highest,
        "caught_up_after": caught_up,
        "read_per_checkpoint": executor.job.feed.checkpoints_read / written,
    }


def _written(feed: Path, first: int) -> int:
    """The first number from ``first`` on with no file yet."""
    n = first
    while (feed / f"{n}.chk").exists():
        n += 1
    return n


def run_tip(quick: bool, event_loop: str = "auto") -> list[Result]:
    files = 2000 if quick else 100_000
    seconds = 1.0 if quick else 4.0
    with tempfile.TemporaryDirectory(prefix="indexer-bench-") as tmp:
        feed = Path(tmp) / "feed"
        write_bench_feed(feed, files)
        alone: list[float] = []
        beside: list[float] = []
        newcomer: dict[str, Any] = {}
        tip = files
        for _ in range(1 if quick else 3):
            tip = _written(feed, tip)
            alone.append(run_on(event_loop, _tip_lag(feed, tip, seconds, False))["lag"])
            tip = _written(feed, tip)
            newcomer = run_on(event_loop, _tip_lag(feed, tip, seconds, True))
            beside.append(newcomer["lag"])
    best_alone, best_beside = min(alone), min(beside)
    return [
        Result(
            "cohort-tip",
            figure=best_beside,
            reference=best_alone,
            unit="checkpoints of mean lag",
            bar=1.2,  # the newcomer raises the tip's lag by 20% at most
            higher_is_better=False,
            details={
                "feed_files": files,
                "growth_per_second": GROWTH_PER_SECOND,
                "seconds": seconds,
                "tip_mean_lag_alone": round(best_alone, 1),
                "tip_mean_lag_beside_newcomer": round(best_beside, 1),
                "newcomer_processed": newcomer.get("new_processed"),
                "newcomer_behind_at_end": newcomer.get("new_behind"),
                "newcomer_caught_up_after_s": None
                if newcomer.get("caught_up_after") is None
                else round(newcomer["caught_up_after"], 2),
                "checkpoints_read_per_feed_checkpoint": round(
                    newcomer.get("read_per_checkpoint", 0.0), 3
                ),
            },
        )
    ]

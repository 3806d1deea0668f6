"""io-bound: a worker that awaits 10 ms, against the ideal concurrency / latency."""

from __future__ import annotations

import asyncio
import time

from ..._loop import run_on
from ...checkpoint import Checkpoint
from ...executor import IndexerExecutor
from ...pipeline import WorkerPool
from ...progress import MemoryProgressStore
from ...sources import MemorySource
from ...worker import Worker
from ._common import Result, checkpoints

LATENCY = 0.010
CONCURRENCY = 256


class Sleeper(Worker[Checkpoint, None]):
    """Waits like a network call would."""

    name = "sleeper"

    async def process_checkpoint(self, checkpoint: Checkpoint) -> None:
        await asyncio.sleep(LATENCY)


async def _throughput(source: MemorySource, concurrency: int) -> float:
    executor = IndexerExecutor(MemoryProgressStore(), handle_signals=False)
    executor.register(WorkerPool(Sleeper(), concurrency=concurrency))
    started = time.perf_counter()
    await executor.run(source)
    return len(source) / (time.perf_counter() - started)


def sweep(concurrencies: list[int], batches: int, event_loop: str = "auto") -> dict[int, float]:
    """Throughput at each concurrency, each run long enough for ``batches`` full rounds."""
    return {
        c: run_on(event_loop, _throughput(MemorySource(checkpoints(c * batches)), c))
        for c in concurrencies
    }


async def _bare_tasks(concurrency: int, batches: int) -> float:
    """The same sleeps in plain tasks: what the event loop's timers allow on this machine."""

    async def sleeper() -> None:
        for _ in range(batches):
            await asyncio.sleep(LATENCY)

    started = time.perf_counter()
    await asyncio.gather(*(sleeper() for _ in range(concurrency)))
    return concurrency * batches / (time.perf_counter() - started)


def run(quick: bool, event_loop: str = "auto") -> list[Result]:
    batches = 10 if quick else 40
    ideal = CONCURRENCY / LATENCY
    measured = sweep([CONCURRENCY], batches, event_loop)[CONCURRENCY]
    bare = run_on(event_loop, _bare_tasks(CONCURRENCY, batches))
    return [
        Result(
            "io-bound",
            figure=measured,
            reference=ideal,
            unit="checkpoints/s",
            bar=0.85,
            details={
                "latency_s": LATENCY,
                "concurrency": CONCURRENCY,
                "checkpoints": CONCURRENCY * batches,
                "bare_tasks_ratio_to_ideal": round(bare / ideal, 3),
                "ratio_to_bare_tasks": round(measured / bare, 3),
            },
        )
    ]

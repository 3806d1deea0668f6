"""dispatch: a no-op worker over decoded checkpoints in memory, against a bare asyncio queue.

The reference is the cheapest sensible asyncio design: ``concurrency`` long-lived tasks fed by a
bounded ``asyncio.Queue``. Both sides get the same checkpoint objects, so what is measured is the
framework's per-checkpoint machinery (window, queue, tasks, watermark, committer).
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..._loop import run_on
from ...executor import IndexerExecutor
from ...pipeline import WorkerPool
from ...progress import MemoryProgressStore
from ...sources import MemorySource
from ._common import Noop, Result, best_interleaved, checkpoints, seconds

CONCURRENCY = 64


async def bare_queue(items: list[Any], concurrency: int) -> None:
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=2 * concurrency)
    worker = Noop()

    async def consume() -> None:
        while (checkpoint := await queue.get()) is not None:
            await worker.process_checkpoint(checkpoint)

    tasks = [asyncio.create_task(consume()) for _ in range(concurrency)]
    for checkpoint in items:
        await queue.put(checkpoint)
    for _ in tasks:
        await queue.put(None)
    await asyncio.gather(*tasks)


async def framework(source: MemorySource, concurrency: int, timing: bool = True) -> None:
    executor = IndexerExecutor(MemoryProgressStore(), handle_signals=False, timing=timing)
    executor.register(WorkerPool(Noop(), concurrency=concurrency))
    result = await executor.run(source)
    assert result["noop"] == len(source), result


def run(quick: bool, event_loop: str = "auto") -> list[Result]:
    count = 20_000 if quick else 200_000
    rounds = 2 if quick else 3
    items = checkpoints(count)
    source = MemorySource(items)

    best = best_interleaved(
        rounds,
        {
            "bare": lambda: seconds(lambda: run_on(event_loop, bare_queue(items, CONCURRENCY))),
            "timed": lambda: seconds(lambda: run_on(event_loop, framework(source, CONCURRENCY))),
            "untimed": lambda: seconds(
                lambda: run_on(event_loop, framework(source, CONCURRENCY, timing=False))
            ),
        },
    )
    framework_timed, bare = best["timed"], best["bare"]
    details = {
        "count": count,
        "concurrency": CONCURRENCY,
        "us_per_checkpoint": round(framework_timed / count * 1e6, 2),
        "bare_us_per_checkpoint": round(bare / count * 1e6, 2),
        "metrics_timing_cost": round(framework_timed / best["untimed"] - 1, 3),
    }
    return [Result.throughput("dispatch", count, framework_timed, bare, bar=0.5, details=details)]

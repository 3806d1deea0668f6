"""Dispatch overhead: the framework against a bare asyncio queue, side by side in one run.

Both sides get the same decoded checkpoints in memory and a worker that does nothing, so what is
measured is the per-checkpoint cost of the machinery (window, preprocess hook, queue, workers,
watermark, committer). The reference is the cheapest sensible asyncio design: ``concurrency``
long-lived tasks fed by a bounded ``asyncio.Queue``.

    python benchmarks/dispatch.py [--count 100000] [--concurrency 64] [--rounds 3] [--json]

Runs alternate (reference, framework, reference, ...) and the best of each is kept, because the
machines this runs on are shared and noisy; the ratio is what to read, not the absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from typing import Any

import msgspec

from indexer import Checkpoint, IndexerExecutor, Worker, WorkerPool
from indexer.progress import MemoryProgressStore
from indexer.sources import MemorySource, SyntheticSource
from indexer.testing import RecordingReducer


class Noop(Worker[Checkpoint, None]):
    async def process_checkpoint(self, checkpoint: Checkpoint) -> None:
        return None


class Count(Worker[Checkpoint, int]):
    async def process_checkpoint(self, checkpoint: Checkpoint) -> int:
        return checkpoint.sequence_number


class Discard(RecordingReducer[int]):
    async def commit(self, batch: list[int]) -> None:
        return None


def make_checkpoints(count: int, distinct: int = 2000) -> list[Checkpoint]:
    """``count`` realistic checkpoints: ``distinct`` synthetic ones, renumbered (shallow copies)."""
    source = SyntheticSource(seed=42)
    templates = [source.checkpoint_at(n) for n in range(min(distinct, count))]
    replace = msgspec.structs.replace
    return [replace(templates[n % len(templates)], sequence_number=n) for n in range(count)]


async def bare_queue(checkpoints: list[Checkpoint], concurrency: int) -> float:
    """The reference: a producer feeding ``concurrency`` tasks through a bounded queue."""
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=2 * concurrency)
    worker = Noop()

    async def consume() -> None:
        while True:
            checkpoint = await queue.get()
            if checkpoint is None:
                return
            await worker.process_checkpoint(checkpoint)

    started = time.perf_counter()
    tasks = [asyncio.create_task(consume()) for _ in range(concurrency)]
    for checkpoint in checkpoints:
        await queue.put(checkpoint)
    for _ in tasks:
        await queue.put(None)
    await asyncio.gather(*tasks)
    return time.perf_counter() - started


async def framework(
    checkpoints: list[Checkpoint],
    concurrency: int,
    with_reducer: bool,
    source: MemorySource,
    timing: bool = True,
) -> float:
    executor = IndexerExecutor(MemoryProgressStore(), handle_signals=False, timing=timing)
    if with_reducer:
        pool = WorkerPool(Count(), concurrency=concurrency, reducer=Discard(max_batch_size=1000))
    else:
        pool = WorkerPool(Noop(), concurrency=concurrency)
    executor.register(pool)
    started = time.perf_counter()
    result = await executor.run(source)
    elapsed = time.perf_counter() - started
    assert result[pool.name] == len(checkpoints), result
    return elapsed


def measure(count: int, concurrency: int, rounds: int) -> dict[str, Any]:
    checkpoints = make_checkpoints(count)
    source = MemorySource(checkpoints)
    names = ("bare_queue", "framework", "framework_untimed", "framework_reducer")
    best = dict.fromkeys(names, float("inf"))
    for _ in range(rounds):
        gc.collect()
        best["bare_queue"] = min(
            best["bare_queue"], asyncio.run(bare_queue(checkpoints, concurrency))
        )
        gc.collect()
        best["framework"] = min(
            best["framework"], asyncio.run(framework(checkpoints, concurrency, False, source))
        )
        gc.collect()
        best["framework_untimed"] = min(
            best["framework_untimed"],
            asyncio.run(framework(checkpoints, concurrency, False, source, timing=False)),
        )
        gc.collect()
        best["framework_reducer"] = min(
            best["framework_reducer"],
            asyncio.run(framework(checkpoints, concurrency, True, source)),
        )
    per_item = {name: seconds / count * 1e6 for name, seconds in best.items()}
    return {
        "count": count,
        "concurrency": concurrency,
        "python": sys.version.split()[0],
        "us_per_checkpoint": {k: round(v, 2) for k, v in per_item.items()},
        "checkpoints_per_second": {k: round(count / v) for k, v in best.items()},
        "cost_ratio_framework": round(per_item["framework"] / per_item["bare_queue"], 2),
        "metrics_cost": round(per_item["framework"] / per_item["framework_untimed"] - 1, 3),
        "cost_ratio_framework_reducer": round(
            per_item["framework_reducer"] / per_item["bare_queue"], 2
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.count, args.concurrency, args.rounds)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.count} checkpoints, concurrency {args.concurrency}, Python {result['python']}")
    for name, us in result["us_per_checkpoint"].items():
        rate = result["checkpoints_per_second"][name]
        print(f"  {name:<18} {us:7.2f} us/checkpoint  {rate:>9,}/s")
    print(f"  cost ratio (framework / bare queue): {result['cost_ratio_framework']}")
    print(
        f"  cost ratio (framework + reducer / bare queue): {result['cost_ratio_framework_reducer']}"
    )


if __name__ == "__main__":
    main()

"""What every scenario shares: results, realistic data made fast, timing helpers."""

from __future__ import annotations

import gc
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec

from ...checkpoint import Checkpoint, CheckpointDecoder, encode_checkpoint
from ...sources import CheckpointSource, SourcedBatch, SyntheticSource
from ...worker import Worker
from ._result import Result, cpu_count

__all__ = [
    "Noop",
    "RenumberedSource",
    "Result",
    "best_interleaved",
    "checkpoints",
    "cpu_count",
    "seconds",
    "templates",
    "write_bench_feed",
]


class Noop(Worker[Checkpoint, None]):
    """Does nothing: what is measured is the framework."""

    name = "noop"

    async def process_checkpoint(self, checkpoint: Checkpoint) -> None:
        return None


_TEMPLATES: list[Checkpoint] = []


def templates(distinct: int = 2000) -> list[Checkpoint]:
    """Realistic synthetic checkpoints (~2 KB encoded), generated once per process."""
    if len(_TEMPLATES) < distinct:
        source = SyntheticSource(seed=42)
        _TEMPLATES[:] = [source.checkpoint_at(n) for n in range(distinct)]
    return _TEMPLATES[:distinct]


def checkpoints(count: int, start: int = 0) -> list[Checkpoint]:
    """``count`` realistic checkpoints: templates renumbered (shallow copies, cheap to make)."""
    base = templates()
    replace = msgspec.structs.replace
    return [replace(base[n % len(base)], sequence_number=n) for n in range(start, start + count)]


class RenumberedSource(CheckpointSource):
    """An endless or finite realistic source that costs almost nothing to produce, so that a
    benchmark measures the framework and not the generator."""

    def __init__(self, count: int | None = None, batch_size: int = 256) -> None:
        self.count = count
        self.batch_size = batch_size

    async def stream(
        self, start: int, decoder: CheckpointDecoder[Any]
    ) -> AsyncIterator[SourcedBatch]:
        base = templates()
        sizes = [len(encode_checkpoint(cp)) for cp in base]
        replace = msgspec.structs.replace
        n = start
        end = self.count if self.count is not None else None
        while end is None or n < end:
            stop = n + self.batch_size if end is None else min(end, n + self.batch_size)
            yield [
                (replace(base[i % len(base)], sequence_number=i), sizes[i % len(base)])
                for i in range(n, stop)
            ]
            n = stop

    async def latest_sequence_number(self) -> int | None:
        return None if self.count is None else self.count - 1


def write_bench_feed(directory: Path, count: int) -> None:
    """Write ``count`` realistic ``.chk`` files quickly (templates renumbered)."""
    directory.mkdir(parents=True, exist_ok=True)
    base = templates()
    replace = msgspec.structs.replace
    encode = msgspec.msgpack.Encoder().encode
    for n in range(count):
        path = directory / f"{n}.chk"
        if not path.exists():
            path.write_bytes(encode(replace(base[n % len(base)], sequence_number=n)))


def best_interleaved(rounds: int, sides: dict[str, Callable[[], float]]) -> dict[str, float]:
    """Each side's smallest timing (the least disturbed by a shared machine) over ``rounds``
    rounds that run every side in turn, so that a noisy moment hits them all."""
    best = dict.fromkeys(sides, float("inf"))
    for _ in range(rounds):
        for name, run in sides.items():
            gc.collect()
            best[name] = min(best[name], run())
    return best


def seconds(run: Callable[[], Any]) -> float:
    """How long ``run()`` took."""
    started = time.perf_counter()
    run()
    return time.perf_counter() - started

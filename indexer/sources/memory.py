"""A finite source over checkpoint objects already in memory (tests, dispatch benchmarks)."""

from __future__ import annotations

import asyncio
from bisect import bisect_right
from collections.abc import AsyncGenerator, Iterable
from typing import Any

from ..checkpoint import CheckpointDecoder, encode_checkpoint
from ._base import CheckpointSource, SourcedBatch


class MemorySource(CheckpointSource):
    """Serves a list of checkpoints; encoded sizes are computed once, at construction.

    ``stream(start)`` yields the checkpoints whose sequence number is at least ``start``; from the
    first of them on the list must be sorted and gap-free, or ``stream`` raises ValueError.
    """

    def __init__(self, checkpoints: Iterable[Any], batch_size: int = 1024) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self._checkpoints = list(checkpoints)
        self._numbers: list[int] = [cp.sequence_number for cp in self._checkpoints]
        self._sizes = [len(encode_checkpoint(cp)) for cp in self._checkpoints]
        first = self._numbers[0] if self._numbers else 0
        # The usual case, a run n, n+1, ...: the first index of any start is arithmetic.
        self._contiguous = self._numbers == list(range(first, first + len(self._numbers)))

    def __len__(self) -> int:
        return len(self._checkpoints)

    def _first_index(self, start: int) -> int:
        numbers = self._numbers
        if self._contiguous:
            return min(max(start - numbers[0], 0), len(numbers)) if numbers else 0
        index = next((i for i, n in enumerate(numbers) if n >= start), len(numbers))
        for i in range(index + 1, len(numbers)):
            if numbers[i] != numbers[i - 1] + 1:
                raise ValueError(
                    f"MemorySource checkpoints must be sorted and gap-free from the first one "
                    f"streamed: checkpoint {numbers[i]} follows {numbers[i - 1]} "
                    f"(at index {i})"
                )
        return index

    def stream(
        self, start: int, decoder: CheckpointDecoder[Any]
    ) -> AsyncGenerator[SourcedBatch, None]:
        """Yield the checkpoints numbered ``start`` or more, converted with ``decoder.convert``."""
        return self._serve(start, None, decoder)

    def stream_to(
        self, start: int, last: int, decoder: CheckpointDecoder[Any]
    ) -> AsyncGenerator[SourcedBatch, None]:
        """``stream`` that ends after checkpoint ``last``."""
        return self._serve(start, last, decoder)

    async def _serve(
        self, start: int, last: int | None, decoder: CheckpointDecoder[Any]
    ) -> AsyncGenerator[SourcedBatch, None]:
        index = self._first_index(start)
        checkpoints, sizes, convert = self._checkpoints, self._sizes, decoder.convert
        stop = len(checkpoints)
        if last is not None:
            stop = bisect_right(self._numbers, last, index)
        for begin in range(index, stop, self.batch_size):
            end = min(begin + self.batch_size, stop)
            yield [(convert(checkpoints[i]), sizes[i]) for i in range(begin, end)]
            # Never starve the loop, even when the consumer does not await between batches.
            await asyncio.sleep(0)

    async def latest_sequence_number(self) -> int | None:
        """The last checkpoint's sequence number, or None when the source is empty."""
        return self._numbers[-1] if self._numbers else None

"""Helpers for testing Workers and Reducers: run them over a list of checkpoints in a test.

result = await run_worker(MyWorker(), make_checkpoints(100))
assert result.messages[5] == ...
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .checkpoint import Checkpoint, Event, Transaction
from .executor import IndexerExecutor
from .pipeline import WorkerPool
from .progress import MemoryProgressStore, ProgressStore
from .reducer import Reducer
from .retry import RetryPolicy
from .sources import MemorySource
from .worker import Worker

MessageT = TypeVar("MessageT")

__all__ = ["RecordingReducer", "WorkerRun", "make_checkpoints", "run_worker"]


class RecordingReducer(Reducer[MessageT]):
    """A Reducer that keeps every committed batch in ``batches`` (for assertions)."""

    def __init__(self, **limits: Any) -> None:
        super().__init__(**limits)
        self.batches: list[list[MessageT]] = []

    async def commit(self, batch: list[MessageT]) -> None:
        self.batches.append(list(batch))

    @property
    def messages(self) -> list[MessageT]:
        return [message for batch in self.batches for message in batch]


@dataclass
class WorkerRun(Generic[MessageT]):
    """What ``run_worker`` observed: committed messages in order, batches, final watermark."""

    watermark: int
    messages: list[MessageT]
    batches: list[list[MessageT]]
    store: ProgressStore
    dead_letters: list[int] = field(default_factory=list)


def make_checkpoints(count: int, *, start: int = 0, transactions: int = 1) -> list[Checkpoint]:
    """Small, valid checkpoints ``start .. start+count-1`` with one event per transaction."""
    return [
        Checkpoint(
            sequence_number=n,
            timestamp_ms=1_700_000_000_000 + n * 250,
            transactions=[
                Transaction(
                    digest=f"tx-{n}-{t}",
                    sender=f"0x{t:040x}",
                    events=[Event(type="test::Event", payload={"n": n, "t": t})],
                )
                for t in range(transactions)
            ],
        )
        for n in range(start, start + count)
    ]


async def run_worker(
    worker: Worker[Any, MessageT],
    checkpoints: Iterable[Any],
    *,
    reducer: Reducer[MessageT] | None = None,
    concurrency: int = 1,
    retry: RetryPolicy | None = None,
    store: ProgressStore | None = None,
    last_checkpoint: int | None = None,
    **pool_options: Any,
) -> WorkerRun[MessageT]:
    """Run ``worker`` over ``checkpoints`` (sorted, gap-free) through the real pipeline.

    Without a ``reducer`` the messages are recorded by a ``RecordingReducer`` with the default
    limits. Errors propagate as they would from ``IndexerExecutor.run``. A ``store`` that was
    not open is closed again before returning (its methods reopen it on use).
    """
    checkpoints = list(checkpoints)
    recorder = reducer if reducer is not None else RecordingReducer(max_batch_age=0.01)
    store = store if store is not None else MemoryProgressStore()
    executor = IndexerExecutor(store, handle_signals=False, tune_gc=False)
    pool = WorkerPool(
        worker,
        concurrency=concurrency,
        reducer=recorder,
        retry=retry,
        **pool_options,
    )
    executor.register(pool)
    opened_here = not store.is_open
    await store.open()
    try:
        watermarks = await executor.run(MemorySource(checkpoints), last_checkpoint=last_checkpoint)
        dead = [d.sequence_number for d in await store.dead_letters(pool.name)]
    finally:
        if opened_here:  # a store the caller opened stays open; one opened here is closed
            await store.close()
    batches: Sequence[list[MessageT]] = getattr(recorder, "batches", [])
    return WorkerRun(
        watermark=watermarks[pool.name],
        messages=[m for batch in batches for m in batch],
        batches=list(batches),
        store=store,
        dead_letters=dead,
    )

"""The progress store contract: per-pipeline watermarks, dead letters, stalls and
pruned-below marks."""

from __future__ import annotations

import contextlib
import time
from abc import abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import msgspec

from .._resource import Openable


class DeadLetter(msgspec.Struct, frozen=True):
    """A checkpoint a pipeline gave up on (``on_exhausted="skip"``), with the last error."""

    pipeline: str
    sequence_number: int
    error: str
    recorded_at: float = msgspec.field(default_factory=time.time)


class Stall(msgspec.Struct, frozen=True):
    """A checkpoint holding a pipeline's watermark back: the lowest one failing in the run
    that reports it, with its attempts so far and its last error. A diagnostic for ``indexer
    status``, not progress: stores keep it beside the watermark, unfenced.

    ``location`` is where the error was raised (``file:line``, in the user's code when the
    traceback reaches it); ``committed_at`` when the reporting run last raised the watermark,
    or when it started if it has not raised it yet. Times are seconds since the epoch."""

    pipeline: str
    checkpoint: int
    attempts: int
    error: str
    location: str
    failing_since: float
    committed_at: float
    reported_at: float = msgspec.field(default_factory=time.time)


class ProgressStore(Openable):
    """Keeps each pipeline's watermark: the next checkpoint it has not yet committed.

    A store never lowers a watermark: ``save`` with a lower value keeps the higher one. Only
    ``reset`` lowers it. ``open`` is idempotent; the executor opens a store it is given and
    closes it again if it was the one that opened it.
    """

    is_open: bool = False

    async def open(self) -> None:
        """Connect or create what the store needs (idempotent)."""
        self.is_open = True

    async def close(self) -> None:
        """Release connections and files (idempotent)."""
        self.is_open = False

    def hold(
        self,
        pipelines: Sequence[str],
        *,
        owner: str,
        ttl: float,
        on_lost: Callable[[str, str], None],
    ) -> AbstractAsyncContextManager[ProgressStore]:
        """While inside, ``owner`` is the one writer of ``pipelines`` in this store: what it
        yields is the store to write through. Raises ``PipelineHeld`` (naming the holder) when
        another writer holds one. A store on a database leases each pipeline for ``ttl``
        seconds, renewed on a heartbeat, and fences every write with the lease; when a lease
        is lost ``on_lost(pipeline, reason)`` is called (its writes are refused from then on).
        By default a store is one process's own: there is nothing to hold."""
        return contextlib.nullcontext(self)

    @abstractmethod
    async def load(self, pipeline: str) -> int | None:
        """The pipeline's saved watermark, or None when it has never saved one."""

    @abstractmethod
    async def save(self, pipeline: str, watermark: int) -> int:
        """Raise the pipeline's watermark to ``watermark``; returns the value now stored."""

    @abstractmethod
    async def reset(self, pipeline: str, watermark: int) -> None:
        """Set the watermark to any value, lower included: the one way to re-index."""

    @abstractmethod
    async def watermarks(self) -> dict[str, int]:
        """Every pipeline's saved watermark."""

    @abstractmethod
    async def add_dead_letter(self, pipeline: str, sequence_number: int, error: str) -> None:
        """Record that ``pipeline`` skipped ``sequence_number`` after ``error``."""

    @abstractmethod
    async def dead_letters(self, pipeline: str | None = None) -> list[DeadLetter]:
        """Dead-lettered checkpoints, of one pipeline or all, in sequence order."""

    async def drop(self, pipeline: str) -> None:
        """Forget ``pipeline``: its watermark, dead letters and stalls (``indexer reset
        --drop``)."""
        raise NotImplementedError(f"{type(self).__name__} cannot drop a pipeline")

    async def report_stall(self, stall: Stall) -> None:
        """Record ``stall`` (replacing an earlier record of the same pipeline and checkpoint).
        A store that keeps no stalls ignores it: they are diagnostics."""

    async def clear_stall(self, pipeline: str, checkpoint: int) -> None:
        """Forget the stall of ``pipeline`` at ``checkpoint``, if one is recorded."""

    async def stalls(self, pipeline: str | None = None) -> list[Stall]:
        """Recorded stalls, of one pipeline or all, in checkpoint order. ``reset`` and
        ``drop`` forget a pipeline's."""
        return []

    async def record_pruned(self, pipeline: str, below: int) -> None:
        """Raise ``pipeline``'s pruned-below mark to ``below`` (never lower it), once its
        sink's rows of the checkpoints below are deleted (retention). ``reset`` lowers the
        mark to the new watermark (what is re-indexed is written again), ``drop`` forgets it.
        A store that keeps no mark ignores it: each prune then starts from the bottom."""

    async def pruned_below(self, pipeline: str) -> int | None:
        """``pipeline``'s pruned-below mark, or None when it has none."""
        return None


class TransactionalProgressStore(ProgressStore):
    """A store on a database that can write a batch and a watermark in one transaction.

    ``transaction(pipeline, watermark)`` opens a transaction and yields its connection; when the
    block ends without an error the watermark is raised in the same transaction and it commits,
    otherwise it rolls back and nothing of the batch or the watermark is kept. With
    ``recheck`` (a retry after a failure whose outcome is unknown, such as a connection lost
    around COMMIT) it first raises ``AlreadyCommitted`` when the stored position already
    covers ``watermark``: the earlier attempt committed, and writing the batch again would
    write it twice.
    """

    @abstractmethod
    def transaction(
        self, pipeline: str, watermark: int, *, recheck: bool = False
    ) -> AbstractAsyncContextManager[Any]:
        """Open a transaction that also raises ``pipeline``'s watermark when it commits."""

    def rewind(self, pipeline: str, watermark: int) -> AbstractAsyncContextManager[Any]:
        """Open a transaction that sets ``pipeline``'s watermark to ``watermark``, lower
        included, when it commits: a reset and the deletion of the rows it re-indexes, at
        once (``indexer reset --delete-rows``)."""
        raise NotImplementedError(f"{type(self).__name__} cannot rewind in a transaction")

    def write_transaction(self, action: str) -> AbstractAsyncContextManager[Any]:
        """Open a short write transaction on the store's database that touches no watermark
        (a sink sharing the database deletes its old rows in it: retention); it commits when
        the block ends cleanly and rolls back when it raises. ``action`` names it in errors."""
        raise NotImplementedError(f"{type(self).__name__} has no write transaction")


class FencedView(TransactionalProgressStore):
    """A store that writes a pipeline's position through a lease (its ``save`` and
    ``transaction`` are the subclass's) and reads and keeps the rest in ``inner``, the real
    store, which ``base_store`` finds. Closing leaves ``inner`` open: its owner closes it."""

    inner: ProgressStore

    async def load(self, pipeline: str) -> int | None:
        return await self.inner.load(pipeline)

    async def reset(self, pipeline: str, watermark: int) -> None:
        await self.inner.reset(pipeline, watermark)

    async def watermarks(self) -> dict[str, int]:
        return await self.inner.watermarks()

    async def add_dead_letter(self, pipeline: str, sequence_number: int, error: str) -> None:
        await self.inner.add_dead_letter(pipeline, sequence_number, error)

    async def dead_letters(self, pipeline: str | None = None) -> list[DeadLetter]:
        return await self.inner.dead_letters(pipeline)

    async def drop(self, pipeline: str) -> None:
        await self.inner.drop(pipeline)

    # Stalls are diagnostics, not progress: written to the real store, outside the lease.
    async def report_stall(self, stall: Stall) -> None:
        await self.inner.report_stall(stall)

    async def clear_stall(self, pipeline: str, checkpoint: int) -> None:
        await self.inner.clear_stall(pipeline, checkpoint)

    async def stalls(self, pipeline: str | None = None) -> list[Stall]:
        return await self.inner.stalls(pipeline)

    # The pruned-below mark too: a mark only ever trails the rows deleted, whoever writes it.
    async def record_pruned(self, pipeline: str, below: int) -> None:
        await self.inner.record_pruned(pipeline, below)

    async def pruned_below(self, pipeline: str) -> int | None:
        return await self.inner.pruned_below(pipeline)


def base_store(store: ProgressStore) -> ProgressStore:
    """The store underneath wrappers (``.inner``), which decides whether a sink shares its
    database: a chunk's fenced store is a view onto the pipeline's real store."""
    while isinstance(getattr(store, "inner", None), ProgressStore):
        store = store.inner  # type: ignore[attr-defined]
    return store

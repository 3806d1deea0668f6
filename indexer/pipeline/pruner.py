"""The pruner stage: a pipeline's sink kept to the rows of its newest ``retention`` checkpoints.

Beside a run's committer, at most every ``retention_interval`` seconds, the pruner asks the
reducer to delete the rows of checkpoints below ``watermark - retention`` (``Reducer.prune``,
which deletes in short transactions of bounded size, so that a commit never waits long),
then records that pruned-below mark in the progress store. The mark is written after the
rows are gone: a kill mid-prune leaves it low, and the next prune deletes what is left. A
prune that fails is logged and retried with backoff (``retry``); it never stops the
pipeline, and commits go on meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from .._log import log
from ..errors import ConfigurationError
from ..progress import ProgressStore, base_store
from ..reducer import Reducer
from ..retry import RetryPolicy, logged_retry, retry
from ..stats import PipelineStats

__all__ = ["PRUNE_RETRY", "RetentionPruner"]

#: How a failed prune is retried: forever, backing off to a minute between tries.
PRUNE_RETRY = RetryPolicy(initial=1.0, max_delay=60.0)


class RetentionPruner:
    """Prunes one pipeline's reducer to its newest ``retention`` checkpoints, every
    ``interval`` seconds at most, while a run lasts.

    ``watermark()`` is the pipeline's saved watermark (a chunked job's: the contiguous
    prefix of its done chunks); ``store`` the store the run writes through
    (the mark goes there; the reducer gets the real store underneath, whose database a sink
    sharing it prunes in). ``stats.pruned_below`` follows the mark."""

    def __init__(
        self,
        pipeline: str,
        reducer: Reducer[Any],
        store: ProgressStore,
        *,
        retention: int,
        interval: float,
        watermark: Callable[[], int],
        stats: PipelineStats,
        policy: RetryPolicy = PRUNE_RETRY,
    ) -> None:
        self.pipeline = pipeline
        self.reducer = reducer
        self.store = store
        self.retention = retention
        self.interval = interval
        self.policy = policy
        self.stats = stats
        self._watermark = watermark
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start pruning in the background: at once, then every ``interval`` seconds."""
        self._task = asyncio.create_task(self._run(), name=f"{self.pipeline}:prune")

    async def close(self) -> None:
        """Stop at once; a chunk in progress rolls back, and the mark stays as it was."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        try:
            mark = await retry(
                lambda: self.store.pruned_below(self.pipeline),
                self.policy,
                on_retry=logged_retry("pruned mark not read", pipeline=self.pipeline),
            )
            self.stats.pruned_below = mark
            while True:
                below = self._watermark() - self.retention
                if below > (mark or 0):
                    mark = await self._prune_until_done(below)
                await asyncio.sleep(self.interval)
        except ConfigurationError as exc:  # retrying cannot help; the rows stay
            log.error("pruning stopped", pipeline=self.pipeline, error=str(exc))

    async def _prune_until_done(self, below: int) -> int:
        """``prune(below)`` unless the stored mark is there already (another process of a
        chunked job pruned), retried after a failure (logged) until it succeeds; returns the
        mark now stored."""

        async def catch_up() -> int:
            stored = await self.store.pruned_below(self.pipeline) or 0
            if stored >= below:
                self.stats.pruned_below = max(stored, self.stats.pruned_below or 0)
                return stored
            await self.prune(below)
            return below

        return await retry(
            catch_up,
            self.policy,
            retry_on=lambda exc: not isinstance(exc, ConfigurationError),
            on_retry=logged_retry("prune failed", pipeline=self.pipeline, below=below),
        )

    async def prune(self, below: int) -> int:
        """Delete the rows of checkpoints below ``below``, then record the mark; returns how
        many rows went."""
        deleted = await self.reducer.prune(below, base_store(self.store))
        await self.store.record_pruned(self.pipeline, below)
        self.stats.pruned_below = max(below, self.stats.pruned_below or 0)
        log.info("pruned", pipeline=self.pipeline, below=below, rows=deleted)
        return deleted

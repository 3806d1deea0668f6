"""The stuck checkpoint of a run, told to the progress store for ``indexer status``.

``indexer status`` is another process: what it shows of a running pipeline it reads from the
store. A run whose checkpoints fail records the lowest one failing (a ``Stall``: checkpoint,
attempts, last error and where it was raised, when the watermark last rose) at once on the
first failure, then at most every ``interval`` seconds while that changes, and clears it once
nothing fails. A run where nothing fails writes nothing. A stall is a diagnostic, not
progress: it goes to the real store outside the run's lease, and a write that fails is logged
and dropped, never retried, and never stops the pipeline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .._log import log
from ..progress import ProgressStore, Stall
from .failures import FailingCheckpoints

__all__ = ["StallReporter"]

#: Seconds between two writes of a run's stall.
REPORT_EVERY = 5.0


class StallReporter:
    """Keeps the store told which checkpoint of a run fails: what ``failing`` holds.

    ``committed_at()`` is when the run last raised the watermark (or started). The writing
    task starts with the first change (``changed``) and ends with ``close``."""

    def __init__(
        self,
        pipeline: str,
        store: ProgressStore,
        failing: FailingCheckpoints,
        *,
        committed_at: Callable[[], float],
        interval: float = REPORT_EVERY,
    ) -> None:
        self.pipeline = pipeline
        self.store = store
        self.failing = failing
        self.interval = interval
        self._committed_at = committed_at
        self._written: Stall | None = None  # what the store holds from this run
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def changed(self) -> None:
        """A checkpoint failed or stopped failing: report it, at once the first time."""
        if self._closed:
            return
        self._changed.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self.pipeline}:stall")

    async def close(self) -> None:
        """The run ended: leave the store holding what fails now (a halted or stopped run's
        stuck checkpoint stays visible to ``indexer status``); waits ``interval`` at most."""
        self._closed = True
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        try:
            async with asyncio.timeout(self.interval):
                await self._write()
        except TimeoutError:
            log.warning("stall not recorded: the store did not answer", pipeline=self.pipeline)

    def abort(self) -> None:
        """Stop at once, writing nothing more."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            self._changed.clear()
            await self._write()
            await asyncio.sleep(self.interval)
            await self._changed.wait()

    def _current(self) -> Stall | None:
        lowest = self.failing.lowest()
        if lowest is None:
            return None
        checkpoint, failing = lowest
        return Stall(
            self.pipeline,
            checkpoint,
            failing.attempts,
            failing.error,
            failing.failure.location,
            failing.since,
            self._committed_at(),
        )

    async def _write(self) -> None:
        """Make the store hold the current stall: clear the one written before if another
        checkpoint (or none) is failing now, then record the current one."""
        stall, written = self._current(), self._written
        try:
            if written is not None and (stall is None or stall.checkpoint != written.checkpoint):
                await self.store.clear_stall(self.pipeline, written.checkpoint)
                self._written = None
            if stall is not None:
                await self.store.report_stall(stall)
                self._written = stall
        except Exception as exc:  # a diagnostic: never a reason to stop
            log.warning("stall not recorded", pipeline=self.pipeline, error=repr(exc))

"""The watermark of a pipeline run in chunks, as the metrics and the progress bars show it.

A process of a chunked job works on one chunk at a time; the pipeline's watermark is the
contiguous prefix of completed work, which the claim store holds (``job_watermark``).
``JobWatermarkWatcher`` reads it every few seconds into the job's view, with the chunks by
state and the timestamp of the newest committed checkpoint below it that this process knows.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .._log import log
from ..claims import WHOLE, ChunkLayout, ClaimStore
from ..progress import ProgressStore
from ..stats import JobView, PipelineView

__all__ = ["JobWatermarkWatcher", "job_watermark"]


async def job_watermark(
    claims: ClaimStore,
    store: ProgressStore,
    pipeline: str,
    layout: ChunkLayout,
    last: int | None,
) -> int:
    """The contiguous prefix of completed work: every done chunk from the first on, then the
    saved progress of the first chunk not done (or the pipeline's own watermark when that is
    higher, as after a run without chunks)."""
    prefix = await claims.completed_prefix(pipeline)
    watermark = layout.bounds(prefix)[0]
    progress = await claims.progress(pipeline, prefix)
    if progress is not None:
        watermark = max(watermark, progress)
    if last is not None:
        watermark = min(watermark, last + 1)
    return max(watermark, await store.load(pipeline) or 0)


class JobWatermarkWatcher:
    """Keeps each pipeline's ``job_watermark``, ``job_stamp`` and ``chunks`` in ``job``
    up to date, every ``interval`` seconds until cancelled."""

    def __init__(
        self,
        claims: ClaimStore,
        store: ProgressStore,
        job: JobView,
        layouts: dict[str, ChunkLayout],
        last: int | None,
        interval: float = 1.0,
    ) -> None:
        self.claims = claims
        self.store = store
        self.job = job
        self.layouts = layouts
        self.last = last
        self.interval = interval

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is busy or away: the run itself will say
                log.debug("could not read the job's watermark", error=repr(exc))
            await asyncio.sleep(self.interval)

    async def refresh(self) -> None:
        """Read every pipeline's watermark and chunks from the stores once."""
        for name, layout in self.layouts.items():
            watermark = await job_watermark(self.claims, self.store, name, layout, self.last)
            chunks = await self.claims.chunks(name)
            now = self.claims.clock()
            states = {"done": 0, "leased": 0, "pending": 0}
            for chunk in chunks:
                if chunk.chunk == WHOLE:
                    continue
                state = "done" if chunk.done else "leased" if chunk.held(now) else "pending"
                states[state] += 1
            view = self.job.pipeline(name)
            view.job_watermark = max(watermark, view.job_watermark or 0)
            if view.job_start is None:
                view.job_start = watermark
            view.chunks, view.chunks_at = states, now
            self.stamp(view)

    @staticmethod
    def stamp(view: PipelineView) -> None:
        """Keep in ``view.job_stamp`` the newest committed ``(watermark, timestamp)`` this
        process knows at or below the pipeline's watermark."""
        mark = view.job_watermark
        if mark is None:
            return
        best: Any = view.job_stamp
        for watermark, stamp in view.stats.recent_stamps:
            if watermark <= mark and (best is None or watermark > best[0]):
                best = (watermark, stamp)
        view.job_stamp = best

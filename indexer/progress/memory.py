"""A progress store kept in memory: for tests and for runs that need not resume."""

from __future__ import annotations

from typing import Any

from ._base import DeadLetter, ProgressStore, Stall


class MemoryProgressStore(ProgressStore):
    """Watermarks, dead letters, stalls and pruned-below marks in plain dicts; everything is
    lost when the process ends.

    A dead letter (and a stall) is keyed by ``(pipeline, sequence_number)`` like the SQLite
    table: recording the same checkpoint again replaces it.
    """

    def __init__(self, initial: dict[str, int] | None = None) -> None:
        self._watermarks: dict[str, int] = dict(initial or {})
        self._dead_letters: dict[tuple[str, int], DeadLetter] = {}
        self._stalls: dict[tuple[str, int], Stall] = {}
        self._pruned: dict[str, int] = {}

    async def load(self, pipeline: str) -> int | None:
        """The pipeline's watermark, or None when it has never saved one."""
        return self._watermarks.get(pipeline)

    async def save(self, pipeline: str, watermark: int) -> int:
        """Raise the watermark (never lower it); returns the value now stored."""
        current = self._watermarks.get(pipeline)
        if current is None or watermark > current:
            self._watermarks[pipeline] = watermark
            return watermark
        return current

    async def reset(self, pipeline: str, watermark: int) -> None:
        """Set the watermark to any value, lower included, forget the pipeline's stalls and
        lower its pruned-below mark to the watermark."""
        self._watermarks[pipeline] = watermark
        self._forget(self._stalls, pipeline)
        if self._pruned.get(pipeline, 0) > watermark:
            self._pruned[pipeline] = watermark

    async def drop(self, pipeline: str) -> None:
        """Forget the pipeline's watermark, dead letters, stalls and pruned-below mark."""
        self._watermarks.pop(pipeline, None)
        self._pruned.pop(pipeline, None)
        self._forget(self._dead_letters, pipeline)
        self._forget(self._stalls, pipeline)

    @staticmethod
    def _forget(records: dict[tuple[str, int], Any], pipeline: str) -> None:
        for key in [key for key in records if key[0] == pipeline]:
            del records[key]

    async def watermarks(self) -> dict[str, int]:
        """A copy of every pipeline's watermark."""
        return dict(self._watermarks)

    async def add_dead_letter(self, pipeline: str, sequence_number: int, error: str) -> None:
        """Record a skipped checkpoint (replacing an earlier record of the same one)."""
        self._dead_letters[(pipeline, sequence_number)] = DeadLetter(
            pipeline, sequence_number, error
        )

    async def dead_letters(self, pipeline: str | None = None) -> list[DeadLetter]:
        """Dead letters of one pipeline or all, sorted by sequence number then pipeline."""
        return sorted(
            (d for d in self._dead_letters.values() if pipeline is None or d.pipeline == pipeline),
            key=lambda d: (d.sequence_number, d.pipeline),
        )

    async def report_stall(self, stall: Stall) -> None:
        """Record a stall (replacing an earlier record of the same checkpoint)."""
        self._stalls[(stall.pipeline, stall.checkpoint)] = stall

    async def clear_stall(self, pipeline: str, checkpoint: int) -> None:
        """Forget the stall of ``pipeline`` at ``checkpoint``."""
        self._stalls.pop((pipeline, checkpoint), None)

    async def stalls(self, pipeline: str | None = None) -> list[Stall]:
        """Stalls of one pipeline or all, sorted by checkpoint then pipeline."""
        return sorted(
            (s for s in self._stalls.values() if pipeline is None or s.pipeline == pipeline),
            key=lambda s: (s.checkpoint, s.pipeline),
        )

    async def record_pruned(self, pipeline: str, below: int) -> None:
        """Raise the pipeline's pruned-below mark (never lower it)."""
        if below > self._pruned.get(pipeline, -1):
            self._pruned[pipeline] = below

    async def pruned_below(self, pipeline: str) -> int | None:
        """The pipeline's pruned-below mark, or None."""
        return self._pruned.get(pipeline)

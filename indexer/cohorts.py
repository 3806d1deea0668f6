"""Cohorts: the pipelines of a run that share one read of the feed.

Each pipeline takes the feed's batches at its own pace, as fast as its window admits them, from
its cohort. A cohort reads the feed once for its members and keeps what it read until every
member has passed it; while other cohorts read too it keeps its newest ``distance`` checkpoints,
so that one coming up from behind can join it. A member more than ``distance`` checkpoints (or
``max_bytes`` of encoded checkpoints) behind its cohort's newest is dropped from it and reads
on its own, in a new cohort, from the first checkpoint it has not had; a member whose position
comes within the newer half of another cohort's kept span joins that cohort, and a cohort left
with no member stops reading. So:

- a pipeline's pace depends only on its own work: nobody waits for a slower pipeline's window;
- pipelines close together read each checkpoint once, and pipelines far apart read on their own;
- memory is the pipelines' windows plus at most ``distance`` checkpoints kept per cohort.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable

from ._log import log
from .pipeline import PipelineRun
from .sources import SourcedBatch
from .stats import CheckpointTimes, CohortStats, JobView

__all__ = ["DEFAULT_COHORT_BYTES", "DEFAULT_COHORT_DISTANCE", "CohortReader"]

#: How far behind its cohort's newest checkpoint a pipeline may fall and still share its read.
DEFAULT_COHORT_DISTANCE = 4096
#: The most encoded bytes of read checkpoints a cohort keeps for members behind its newest.
DEFAULT_COHORT_BYTES = 32 * 1024 * 1024

#: Opens the feed's stream from a checkpoint on (``source.stream`` or ``source.stream_to``).
OpenStream = Callable[[int], AsyncIterator[SourcedBatch]]


class _Member:
    """A pipeline's place in its cohort: the next batch it takes and the first checkpoint it
    has not been handed."""

    __slots__ = ("cohort", "index", "next", "run")

    def __init__(self, run: PipelineRun) -> None:
        self.run = run
        self.cohort: Cohort | None = None
        self.index = 0
        self.next = run.start


class Cohort:
    """One read of the feed and the batches kept for its members, oldest first.

    Batches are numbered in the order read; ``_first_index`` is the number of the oldest kept.
    Reading is shared: whichever member needs a batch not read yet reads it, and the others
    wait for that read rather than starting their own."""

    def __init__(self, reader: CohortReader, number: int, start: int) -> None:
        self._reader = reader
        self.stats = CohortStats(number, start)
        self.members: list[_Member] = []
        self.times = CheckpointTimes()
        self._stream = reader.open_stream(start)
        self._batches: deque[SourcedBatch] = deque()
        self._first_index = 0
        self._kept = 0  # checkpoints in _batches
        self._kept_bytes = 0
        self._reading = False  # a member is reading the next batch
        self._read_done: asyncio.Future[None] | None = None  # made for those who wait on it
        self._failed: BaseException | None = None
        self.exhausted = False

    def __repr__(self) -> str:
        names = ",".join(self.stats.pipelines)
        return f"Cohort({self.stats.number}, next={self.next}, pipelines={names})"

    @property
    def next(self) -> int:
        """The next checkpoint this cohort reads from the feed."""
        return self.stats.position

    @property
    def kept_from(self) -> int | None:
        """The oldest checkpoint kept, or None when nothing is."""
        return self._batches[0][0][0].sequence_number if self._batches else None

    def add(self, member: _Member) -> None:
        """Take ``member`` in from its ``next`` checkpoint, which must be kept or be the
        next one read (``covers``)."""
        index = self._first_index + len(self._batches)
        for offset, batch in enumerate(self._batches):
            if batch[-1][0].sequence_number >= member.next:
                index = self._first_index + offset
                break
        member.cohort, member.index = self, index
        self.members.append(member)
        self._renamed()
        member.run.committer.times = self.times

    def remove(self, member: _Member) -> None:
        self.members.remove(member)
        self._renamed()

    def _renamed(self) -> None:
        self.stats.pipelines = tuple(sorted(m.run.name for m in self.members))

    async def take(self, member: _Member) -> SourcedBatch | None:
        """The next batch for ``member`` (only checkpoints it has not had), reading it if
        nobody has; None at the end of a finite feed. Raises ``_Dropped`` when the batch it
        needs is no longer kept."""
        while True:
            offset = member.index - self._first_index
            if offset < 0:
                raise _Dropped
            if offset < len(self._batches):
                batch = self._batches[offset]
                member.index += 1
                if batch[0][0].sequence_number < member.next:  # joined inside this batch
                    batch = [pair for pair in batch if pair[0].sequence_number >= member.next]
                    if not batch:
                        continue
                member.next = batch[-1][0].sequence_number + 1
                self._release()
                return batch
            if self._failed is not None:
                raise self._failed
            if self.exhausted:
                return None
            await self._read()

    async def _read(self) -> None:
        """Read the next batch from the feed, or wait for the member already reading it (a
        future only when someone waits: a lone pipeline reads at the pace of a bare loop)."""
        if self._reading:
            done = self._read_done
            if done is None:
                done = self._read_done = asyncio.get_running_loop().create_future()
            await asyncio.shield(done)
            return
        self._reading = True
        try:
            while True:
                batch = await anext(self._stream)
                if batch:
                    break
            self._kept_read(batch)
        except StopAsyncIteration:
            self.exhausted = True
        except BaseException as exc:  # the members waiting for this read meet it too
            self._failed = exc
            raise
        finally:
            self._reading = False
            done = self._read_done
            if done is not None:
                self._read_done = None
                done.set_result(None)

    def _kept_read(self, batch: SourcedBatch) -> None:
        size = 0
        for _, encoded in batch:
            size += encoded
        count = len(batch)
        self._batches.append(batch)
        self._kept += count
        self._kept_bytes += size
        newest = batch[-1][0].sequence_number + 1
        stats = self.stats
        stats.position = newest
        stats.checkpoints_read += count
        stats.bytes_read += size
        self._reader.counted(count, size, newest - 1)
        times = self.times
        if times.enabled:
            members = self.members
            lowest = (
                members[0].run.watermark
                if len(members) == 1
                else min(m.run.watermark for m in members)
            )
            times.add(batch, lowest)
        if len(self._batches) > 1:
            self._release()

    def _release(self) -> None:
        """Drop the oldest batches: those every member has passed (unless another cohort
        might join this one), and those beyond ``distance`` checkpoints or ``max_bytes``,
        passed or not (the newest batch stays)."""
        batches = self._batches
        members = self.members
        if len(members) == 1:
            passed = members[0].index - self._first_index
        else:
            passed = min((m.index for m in members), default=0) - self._first_index
        reader = self._reader
        keep = reader.others_read()
        distance, max_bytes = reader.distance, reader.max_bytes
        while batches:
            if not (passed > 0 and not keep) and (
                len(batches) == 1 or (self._kept <= distance and self._kept_bytes <= max_bytes)
            ):
                break
            oldest = batches.popleft()
            self._first_index += 1
            passed -= 1
            self._kept -= len(oldest)
            for _, encoded in oldest:
                self._kept_bytes -= encoded

    def covers(self, position: int) -> bool:
        """Whether a pipeline at ``position`` (coming from another cohort) may join: it lies
        in the newer half of the kept span, or is the next checkpoint read."""
        if position > self.next or self._failed is not None or self.exhausted:
            return False
        if position == self.next:
            return True
        oldest = self.kept_from
        if oldest is None or position < oldest:
            return False
        return position >= self.next - self._reader.distance // 2

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._stream.aclose()  # type: ignore[attr-defined]


class _Dropped(Exception):
    """A member fell behind what its cohort keeps."""


class CohortReader:
    """Reads the feed for the pipelines of a run, in cohorts, until each reaches ``last`` (or
    the feed's end, or a stop): one task per pipeline hands it the batches it takes.

    ``open_stream(start)`` opens the feed from ``start``. Pipelines whose starting points lie
    within half the ``distance`` of the lowest of them start as one cohort (the ones ahead read
    through the gap without processing it), the others each in a cohort of their own."""

    def __init__(
        self,
        open_stream: OpenStream,
        runs: list[PipelineRun],
        last: int | None,
        *,
        job: JobView,
        distance: int = DEFAULT_COHORT_DISTANCE,
        max_bytes: int = DEFAULT_COHORT_BYTES,
    ) -> None:
        self.open_stream = open_stream
        self.distance = distance
        self.max_bytes = max_bytes
        self._runs = runs
        self._last = last
        self._job = job
        self._cohorts: list[Cohort] = []
        self._numbers = 0

    def others_read(self) -> bool:
        """Whether more than one cohort reads the feed now."""
        return len(self._cohorts) > 1

    def counted(self, checkpoints: int, size: int, newest: int) -> None:
        """A cohort read ``checkpoints`` of ``size`` bytes up to ``newest``."""
        feed = self._job.feed
        feed.checkpoints_read += checkpoints
        feed.bytes_read += size
        if feed.last_read is None or newest > feed.last_read:
            feed.last_read = newest

    def _new_cohort(self, start: int) -> Cohort:
        self._numbers += 1
        cohort = Cohort(self, self._numbers, start)
        self._cohorts.append(cohort)
        self._job.cohorts[cohort.stats.number] = cohort.stats
        return cohort

    async def _retire(self, cohort: Cohort) -> None:
        self._cohorts.remove(cohort)
        self._job.cohorts.pop(cohort.stats.number, None)
        await cohort.close()

    async def run(self) -> None:
        """Hand every pipeline its checkpoints; returns when each has had all it will get."""
        members = self._group(sorted(self._runs, key=lambda run: run.start))
        tasks = [
            asyncio.create_task(self._deliver(member), name=f"{member.run.name}:read")
            for member in members
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            failed = [task for task in done if not task.cancelled() and task.exception()]
            if failed:
                raise failed[0].exception()  # type: ignore[misc]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            for cohort in list(self._cohorts):
                await self._retire(cohort)
        if self._last is not None and any(m.next > self._last for m in members):
            log.info("reached last_checkpoint", last=self._last)
        else:
            log.info("source exhausted")

    def _group(self, runs: list[PipelineRun]) -> list[_Member]:
        members: list[_Member] = []
        cohort: Cohort | None = None
        for run in runs:
            if cohort is None or run.start - cohort.next > self.distance // 2:
                cohort = self._new_cohort(run.start)
            member = _Member(run)
            cohort.add(member)
            members.append(member)
        return members

    async def _deliver(self, member: _Member) -> None:
        """Hand ``member``'s pipeline each batch it takes, up to ``last``."""
        run, last = member.run, self._last
        try:
            while True:
                cohort = member.cohort
                assert cohort is not None
                try:
                    batch = await cohort.take(member)
                except _Dropped:
                    log.info(
                        "pipeline reads on its own: it fell behind its cohort",
                        pipeline=run.name,
                        at=member.next,
                        cohort_next=cohort.next,
                        distance=self.distance,
                    )
                    await self._move(member, self._new_cohort(member.next))
                    continue
                if batch is None:
                    return
                if last is not None and batch[-1][0].sequence_number >= last:
                    await self._hand(run, [p for p in batch if p[0].sequence_number <= last])
                    return
                taken = run.offer_run(batch)  # the window takes it all, mostly: no coroutine
                if taken < len(batch):
                    await self._hand(run, batch[taken:])
                if run.error is not None:
                    return
                if len(self._cohorts) > 1:
                    await self._join_another(member)
        finally:
            if member.cohort is not None:
                await self._leave(member)

    @staticmethod
    async def _hand(run: PipelineRun, batch: SourcedBatch) -> None:
        """As much of ``batch`` as the window takes in one go, then the rest one by one."""
        taken = run.offer_run(batch)
        offer, submit = run.offer, run.submit
        for checkpoint, size in batch[taken:] if taken else batch:
            if not offer(checkpoint, size):
                await submit(checkpoint, size)

    async def _join_another(self, member: _Member) -> None:
        for cohort in self._cohorts:
            if cohort is not member.cohort and cohort.covers(member.next):
                log.info(
                    "pipeline joins a cohort",
                    pipeline=member.run.name,
                    cohort=cohort.stats.number,
                    at=member.next,
                    cohort_next=cohort.next,
                )
                await self._move(member, cohort)
                return

    async def _move(self, member: _Member, cohort: Cohort) -> None:
        """Move ``member`` into ``cohort``."""
        await self._leave(member)
        cohort.add(member)

    async def _leave(self, member: _Member) -> None:
        """Take ``member`` out of its cohort; a cohort left with no member stops reading."""
        old = member.cohort
        assert old is not None
        old.remove(member)
        member.cohort = None
        if not old.members and old in self._cohorts:
            await self._retire(old)

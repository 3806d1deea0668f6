"""Cohorts: pipelines at different speeds or places read the feed without holding each other.

Through the public API: a pipeline held still does not stop another from reaching its end; a
pipeline that falls behind reads on its own and one that catches up joins the read ahead of
it; pipelines together read each checkpoint once; whatever the paces and starts, each pipeline
is handed every checkpoint of its range exactly once, in order.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indexer import Checkpoint, ConfigurationError, IndexerExecutor, Worker, WorkerPool
from indexer.checkpoint import encode_checkpoint
from indexer.metrics import IndexerCollector
from indexer.progress import MemoryProgressStore
from indexer.sources import MemorySource, SyntheticSource
from indexer.testing import make_checkpoints


class Recorder(Worker[Checkpoint, None]):
    """Records what it is handed; waits at ``hold_at`` until ``release`` is set; yields to the
    loop ``pause`` times per checkpoint (a pace of its own)."""

    def __init__(self, hold_at: int | None = None, pause: int = 0) -> None:
        self.seen: list[int] = []
        self.hold_at = hold_at
        self.pause = pause
        self.release = asyncio.Event()
        self.held = asyncio.Event()

    async def process_checkpoint(self, checkpoint: Checkpoint) -> None:
        number = checkpoint.sequence_number
        self.seen.append(number)
        if number == self.hold_at:
            self.held.set()
            await self.release.wait()
        for _ in range(self.pause):
            await asyncio.sleep(0)


async def wait_for(condition: Any, timeout: float = 20.0) -> None:
    """Until ``condition()`` holds (checked as the loop turns), or fail after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def executor(store: Any = None, **options: Any) -> IndexerExecutor:
    return IndexerExecutor(
        store, handle_signals=False, tune_gc=False, feed_poll_interval=None, **options
    )


async def test_a_held_pipeline_does_not_hold_back_another() -> None:
    fast, slow = Recorder(), Recorder(hold_at=10)
    run = executor(cohort_distance=1000)
    run.register(WorkerPool(fast, name="fast"))
    run.register(WorkerPool(slow, name="slow", max_inflight=64))
    last = 20_000
    task = asyncio.create_task(run.run(SyntheticSource(seed=1, batch_size=100), 0, last))
    # The fast pipeline reaches the end while the slow one stays held at checkpoint 10.
    await wait_for(lambda: len(fast.seen) == last + 1)
    assert slow.held.is_set() and max(slow.seen) < 10 + 64
    assert fast.seen == list(range(last + 1))
    cohorts = {tuple(c.pipelines): c for c in run.job.cohorts.values()}
    assert ("slow",) in cohorts, cohorts  # the fast one left at the end; held, it stays
    # The metrics show each cohort, its members and what it read.
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in IndexerCollector(run.job).collect()
        for sample in family.samples
    }
    assert samples[("indexer_cohorts", ())] == len(cohorts) >= 1
    for members, cohort in cohorts.items():
        label = (("cohort", str(cohort.number)),)
        assert samples[("indexer_cohort_checkpoints_read_total", label)] == cohort.checkpoints_read
        assert samples[("indexer_cohort_bytes_read_total", label)] == cohort.bytes_read
        assert samples[("indexer_cohort_position", label)] == cohort.position
        for name in members:
            assert samples[("indexer_cohort_member", (*label, ("pipeline", name)))] == 1
    assert samples[("indexer_feed_checkpoints_read_total", ())] == run.job.feed.checkpoints_read
    feed = run.job.feed
    slow.release.set()
    marks = await asyncio.wait_for(task, 60)
    assert marks == {"fast": last + 1, "slow": last + 1}
    assert slow.seen == list(range(last + 1))
    # The slow pipeline's own read began where it fell behind, well short of all 20,001 again.
    assert last + 1 < feed.checkpoints_read < 2 * (last + 1)


async def test_a_cohort_keeps_at_most_its_bytes_for_a_member_behind() -> None:
    """However far the distance allows, a held member is dropped (and reads on its own) once
    its cohort would keep more than ``cohort_bytes`` of checkpoints for it."""
    fast, slow = Recorder(), Recorder(hold_at=10)
    run = executor(cohort_distance=10**9, cohort_bytes=256 * 1024)
    run.register(WorkerPool(fast, name="fast"))
    run.register(WorkerPool(slow, name="slow", max_inflight=64))
    last = 3000
    task = asyncio.create_task(run.run(SyntheticSource(seed=3, batch_size=50), 0, last))
    await wait_for(lambda: len(fast.seen) == last + 1)
    slow.release.set()
    assert await asyncio.wait_for(task, 60) == {"fast": last + 1, "slow": last + 1}
    assert slow.seen == list(range(last + 1))
    # What it had not taken was not kept for it: released, it read again on its own from where
    # it was dropped (a cohort keeping everything would have handed it all from memory).
    assert last + 1 < run.job.feed.checkpoints_read < 2 * (last + 1)


async def test_pipelines_together_read_each_checkpoint_once() -> None:
    store = MemoryProgressStore()
    await store.save("later", 1000)  # within half the distance of the others: one read from 0
    run = executor(store, cohort_distance=4096)
    workers = {"first": Recorder(pause=1), "later": Recorder(pause=1), "third": Recorder(pause=1)}
    for name, worker in workers.items():
        run.register(WorkerPool(worker, name=name))
    checkpoints = make_checkpoints(6000)
    source = MemorySource(checkpoints, batch_size=128)
    marks = await asyncio.wait_for(run.run(source), 60)
    assert marks == dict.fromkeys(workers, 6000)
    assert workers["later"].seen == list(range(1000, 6000))
    assert workers["first"].seen == workers["third"].seen == list(range(6000))
    assert run.job.feed.checkpoints_read == 6000
    assert run.job.feed.bytes_read == sum(len(encode_checkpoint(c)) for c in checkpoints)
    assert run.job.cohorts == {}  # every cohort retired at the end


async def test_a_pipeline_that_catches_up_joins_the_read_ahead_of_it() -> None:
    store = MemoryProgressStore()
    await store.save("ahead", 3000)  # more than half the distance ahead: a cohort of its own
    ahead, behind = Recorder(hold_at=3500), Recorder()
    run = executor(store, cohort_distance=4096)
    run.register(WorkerPool(ahead, name="ahead", max_inflight=1024))
    run.register(WorkerPool(behind, name="behind"))
    last = 5000
    task = asyncio.create_task(run.run(SyntheticSource(seed=2, batch_size=256), 0, last))
    await wait_for(lambda: len(behind.seen) == last + 1)
    # "behind" read 0.. on its own until it reached what "ahead"'s cohort kept, then took
    # its checkpoints from there: no checkpoint above the join was read twice.
    assert len(run.job.cohorts) == 1
    assert run.job.feed.checkpoints_read <= (last + 1) + 256
    ahead.release.set()
    marks = await asyncio.wait_for(task, 60)
    assert marks == {"ahead": last + 1, "behind": last + 1}
    assert behind.seen == list(range(last + 1))
    assert ahead.seen == list(range(3000, last + 1))


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    pipelines=st.lists(
        st.tuples(st.integers(0, 250), st.integers(0, 4), st.integers(1, 40)),
        min_size=1,
        max_size=4,
    ),
    distance=st.integers(1, 120),
    batch_size=st.integers(1, 50),
    last=st.integers(0, 400),
)
def test_every_pipeline_gets_its_range_once_in_order(
    pipelines: list[tuple[int, int, int]], distance: int, batch_size: int, last: int
) -> None:
    """Random starts, paces, windows, distances and batch sizes: pipelines split and join
    cohorts as they drift, and each is handed exactly its range, in order."""

    async def scenario() -> None:
        store = MemoryProgressStore()
        run = executor(store, cohort_distance=distance)
        workers: dict[str, tuple[int, Recorder]] = {}
        for index, (start, pause, window) in enumerate(pipelines):
            name = f"p{index}"
            await store.save(name, start)
            workers[name] = (start, Recorder(pause=pause))
            run.register(WorkerPool(workers[name][1], name=name, max_inflight=window))
        source = MemorySource(make_checkpoints(last + 1), batch_size=batch_size)
        marks = await asyncio.wait_for(run.run(source), 60)
        for name, (start, worker) in workers.items():
            assert worker.seen == list(range(start, last + 1)), name
            assert marks[name] == max(start, last + 1)

    asyncio.run(scenario())


@pytest.mark.parametrize("key", ["cohort_distance", "cohort_bytes"])
@pytest.mark.parametrize("value", [0, -5, 2.5, True])
def test_cohort_limits_must_be_positive_integers(key: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=key):
        IndexerExecutor(**{key: value})

"""WorkerPool and Reducer semantics, through the real executor over in-memory checkpoints."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from indexer import (
    Checkpoint,
    ConfigurationError,
    IndexerExecutor,
    PipelineHalted,
    Retry,
    RetryPolicy,
    Worker,
    WorkerPool,
)
from indexer.progress import MemoryProgressStore
from indexer.sources import MemorySource
from indexer.testing import RecordingReducer, make_checkpoints, run_worker

FAST = RetryPolicy(initial=0.001, max_delay=0.005, jitter=0.0)


class Echo(Worker[Checkpoint, int]):
    """Returns the sequence number after a small random delay, so completions interleave."""

    def __init__(self, seed: int = 0, max_delay: float = 0.002) -> None:
        self.rnd = random.Random(seed)
        self.max_delay = max_delay
        self.running = 0
        self.max_running = 0

    async def process_checkpoint(self, checkpoint: Checkpoint) -> int:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await asyncio.sleep(self.rnd.random() * self.max_delay)
        finally:
            self.running -= 1
        return checkpoint.sequence_number


async def test_messages_reach_the_reducer_in_checkpoint_order_under_concurrency() -> None:
    worker = Echo(seed=1)
    result = await run_worker(worker, make_checkpoints(300), concurrency=16)
    assert result.messages == list(range(300))
    assert result.watermark == 300
    assert worker.max_running == 16  # concurrency was used, and never exceeded


async def test_batches_close_on_count() -> None:
    reducer = RecordingReducer(max_batch_size=7, max_batch_age=None)
    result = await run_worker(Echo(), make_checkpoints(30), reducer=reducer, concurrency=4)
    assert [len(b) for b in reducer.batches] == [7, 7, 7, 7, 2]
    assert result.messages == list(range(30))


class SizedReducer(RecordingReducer[int]):
    def message_size(self, message: int) -> int:
        return 100 if message % 5 == 0 else 10


async def test_batches_close_on_bytes_as_a_hard_cap_and_oversize_stands_alone() -> None:
    reducer = SizedReducer(max_batch_size=None, max_batch_bytes=40, max_batch_age=None)
    await run_worker(Echo(), make_checkpoints(11), reducer=reducer, concurrency=3)
    assert reducer.batches == [[0], [1, 2, 3, 4], [5], [6, 7, 8, 9], [10]]
    for batch in reducer.batches:
        assert len(batch) == 1 or sum(reducer.message_size(m) for m in batch) <= 40


class CountingSleepWorker(Worker[Checkpoint, int]):
    async def process_checkpoint(self, checkpoint: Checkpoint) -> int:
        return checkpoint.sequence_number


async def test_a_lone_message_is_committed_by_the_age_timer() -> None:
    """The feed stalls after one checkpoint; the batch still commits within max_batch_age."""
    reducer = RecordingReducer(max_batch_size=1000, max_batch_age=0.05)
    store = MemoryProgressStore()
    executor = IndexerExecutor(store, handle_signals=False, tune_gc=False)
    executor.register(WorkerPool(CountingSleepWorker(), reducer=reducer, name="p"))

    class StallingSource(MemorySource):
        async def stream(self, start: int, decoder: Any):  # type: ignore[override]
            async for batch in super().stream(start, decoder):
                yield batch
            await asyncio.Event().wait()  # a live feed with nothing new

    run = asyncio.create_task(executor.run(StallingSource(make_checkpoints(1))))
    started = time.monotonic()
    while not reducer.batches and time.monotonic() - started < 2:
        await asyncio.sleep(0.005)
    elapsed = time.monotonic() - started
    assert reducer.batches == [[0]]
    assert elapsed < 1.0  # committed by the timer, not by a later message or the shutdown
    assert await store.load("p") == 1
    executor.request_stop()
    assert await asyncio.wait_for(run, 2) == {"p": 1}


class EpochReducer(RecordingReducer[int]):
    def should_close_batch(self, batch: list[int], next_message: int) -> bool:
        return next_message // 10 != batch[0] // 10


async def test_should_close_batch_closes_before_the_next_message() -> None:
    reducer = EpochReducer(max_batch_size=None, max_batch_age=None)
    await run_worker(Echo(), make_checkpoints(25), reducer=reducer, concurrency=5)
    assert reducer.batches == [list(range(10)), list(range(10, 20)), list(range(20, 25))]


class Sparse(Worker[Checkpoint, int | None]):
    async def process_checkpoint(self, checkpoint: Checkpoint) -> int | None:
        return checkpoint.sequence_number if checkpoint.sequence_number % 10 == 3 else None


async def test_no_empty_batch_is_committed_and_the_watermark_passes_empty_checkpoints() -> None:
    reducer = RecordingReducer(max_batch_size=2, max_batch_age=0.01)
    result = await run_worker(Sparse(), make_checkpoints(40), reducer=reducer, concurrency=4)
    assert all(reducer.batches)
    assert reducer.messages == [3, 13, 23, 33]
    assert result.watermark == 40


class FlakyReducer(RecordingReducer[int]):
    def __init__(self, failures: int, **limits: Any) -> None:
        super().__init__(**limits)
        self.failures = failures
        self.attempts: list[list[int]] = []

    async def commit(self, batch: list[int]) -> None:
        self.attempts.append(list(batch))
        if self.failures:
            self.failures -= 1
            raise ConnectionError("database went away")
        await super().commit(batch)


async def test_failed_commit_latches_until_it_succeeds() -> None:
    reducer = FlakyReducer(3, max_batch_size=5, max_batch_age=None, commit_retry=FAST)
    result = await run_worker(Echo(), make_checkpoints(20), reducer=reducer, concurrency=4)
    # The first batch was tried four times before anything after it was attempted.
    assert reducer.attempts[:4] == [[0, 1, 2, 3, 4]] * 4
    assert reducer.batches == [list(range(i, i + 5)) for i in range(0, 20, 5)]
    assert result.watermark == 20


async def test_commit_that_never_succeeds_halts_below_the_batch() -> None:
    reducer = FlakyReducer(
        10**9,
        max_batch_size=5,
        max_batch_age=None,
        commit_retry=FAST.__class__(initial=0.001, max_delay=0.001, max_attempts=3),
    )
    store = MemoryProgressStore()
    with pytest.raises(PipelineHalted, match=r"commit of checkpoints 0\.\.4 failed after 3"):
        await run_worker(Echo(), make_checkpoints(20), reducer=reducer, store=store)
    assert await store.load("Echo") is None
    assert reducer.batches == []


class FailsFirst(Worker[Checkpoint, int]):
    def __init__(self, failures: dict[int, int]) -> None:
        self.failures = dict(failures)
        self.calls: dict[int, int] = {}

    async def process_checkpoint(self, checkpoint: Checkpoint) -> int:
        n = checkpoint.sequence_number
        self.calls[n] = self.calls.get(n, 0) + 1
        if self.failures.get(n, 0) > 0:
            self.failures[n] -= 1
            raise RuntimeError(f"boom at {n}")
        return n


async def test_failures_are_retried_then_succeed() -> None:
    worker = FailsFirst({3: 2, 7: 1})
    result = await run_worker(worker, make_checkpoints(10), concurrency=3, retry=FAST)
    assert result.messages == list(range(10))
    assert worker.calls[3] == 3 and worker.calls[7] == 2 and worker.calls[0] == 1


async def test_exhausted_attempts_halt_naming_the_checkpoint() -> None:
    worker = FailsFirst({6: 10**9})
    store = MemoryProgressStore()
    policy = RetryPolicy(initial=0.001, max_delay=0.001, max_attempts=4)
    with pytest.raises(PipelineHalted, match="checkpoint 6 failed after 4 attempts") as caught:
        await run_worker(worker, make_checkpoints(20), retry=policy, store=store, concurrency=2)
    assert caught.value.sequence_number == 6
    assert worker.calls[6] == 4
    assert await store.load("FailsFirst") == 6  # everything below was committed, 6 was not


async def test_exhausted_attempts_skip_dead_letters_and_go_on() -> None:
    worker = FailsFirst({6: 10**9, 11: 10**9})
    policy = RetryPolicy(initial=0.001, max_delay=0.001, max_attempts=2, on_exhausted="skip")
    result = await run_worker(worker, make_checkpoints(20), retry=policy, concurrency=4)
    assert result.watermark == 20
    assert result.dead_letters == [6, 11]
    assert result.messages == [n for n in range(20) if n not in (6, 11)]
    dead = await result.store.dead_letters("FailsFirst")
    assert "boom at 6" in dead[0].error


class Rescheduling(Worker[Checkpoint, int]):
    def __init__(self, after: float) -> None:
        self.after = after
        self.calls: list[int] = []
        self.started: dict[int, float] = {}

    async def process_checkpoint(self, checkpoint: Checkpoint) -> int:
        n = checkpoint.sequence_number
        self.calls.append(n)
        if n == 0 and self.calls.count(0) == 1:
            raise Retry(after=self.after)
        return n


async def test_long_retry_gives_the_slot_back_and_runs_again_when_due() -> None:
    worker = Rescheduling(after=0.05)
    started = time.monotonic()
    result = await run_worker(worker, make_checkpoints(5), concurrency=1, reschedule_threshold=0.01)
    assert time.monotonic() - started >= 0.05
    # With one slot, 1..4 ran while 0 waited: the slot was given back.
    assert worker.calls == [0, 1, 2, 3, 4, 0]
    assert result.messages == [0, 1, 2, 3, 4]


class SlowRescheduling(Rescheduling):
    async def process_checkpoint(self, checkpoint: Checkpoint) -> int:
        await asyncio.sleep(0.001)
        return await super().process_checkpoint(checkpoint)


async def test_a_rescheduled_checkpoint_goes_ahead_of_newer_queued_ones() -> None:
    """When 0 is due again, newer checkpoints are still queued: 0 runs next, not after them."""
    worker = SlowRescheduling(after=0.02)
    result = await run_worker(
        worker, make_checkpoints(300), concurrency=1, reschedule_threshold=0.01
    )
    again = worker.calls.index(0, 1)
    assert 1 < again < 299, worker.calls  # it came back while newer ones were waiting
    assert worker.calls[:again] == list(range(again))
    assert worker.calls[again + 1 :] == list(range(again, 300))
    assert result.messages == list(range(300))


async def test_short_retry_waits_in_place() -> None:
    worker = Rescheduling(after=0.02)
    result = await run_worker(worker, make_checkpoints(3), concurrency=1, reschedule_threshold=1)
    assert worker.calls == [0, 0, 1, 2]  # held its slot: nothing else ran in between
    assert result.messages == [0, 1, 2]


class Ordered(Worker[Checkpoint, int]):
    def __init__(self) -> None:
        self.hooked: list[int] = []
        self.dispatched_before_hook: list[int] = []
        self.processing: set[int] = set()

    def preprocess_hook(self, checkpoint: Checkpoint) -> None:
        self.hooked.append(checkpoint.sequence_number)

    async def process_checkpoint(self, checkpoint: Checkpoint) -> int:
        n = checkpoint.sequence_number
        if n not in self.hooked:
            self.dispatched_before_hook.append(n)
        await asyncio.sleep(random.Random(n).random() * 0.002)
        return n


async def test_preprocess_hook_runs_once_per_checkpoint_in_order_before_dispatch() -> None:
    worker = Ordered()
    await run_worker(worker, make_checkpoints(200), concurrency=16)
    assert worker.hooked == list(range(200))
    assert worker.dispatched_before_hook == []


class BadHook(Echo):
    def preprocess_hook(self, checkpoint: Checkpoint) -> None:
        if checkpoint.sequence_number == 12:
            raise ValueError("unexpected epoch")


async def test_preprocess_failure_halts_without_retry() -> None:
    store = MemoryProgressStore()
    reducer = RecordingReducer(max_batch_size=2)
    with pytest.raises(PipelineHalted, match=r"preprocess_hook failed at checkpoint 12: .*epoch"):
        await run_worker(
            BadHook(), make_checkpoints(30), store=store, concurrency=4, reducer=reducer
        )
    saved = await store.load("BadHook")
    assert saved is not None and saved <= 12
    assert reducer.messages == list(range(saved))  # a consistent prefix, 12 never committed


async def test_window_bounds_checkpoints_in_flight() -> None:
    seen_window: list[int] = []

    class Probe(Worker[Checkpoint, int]):
        async def process_checkpoint(self, checkpoint: Checkpoint) -> int:
            seen_window.append(executor.job.pipelines["Probe"].inflight)
            await asyncio.sleep(0)
            return checkpoint.sequence_number

    reducer = RecordingReducer(max_batch_size=4, max_batch_age=None)
    pool = WorkerPool(Probe(), concurrency=8, reducer=reducer, max_inflight=10)
    executor = IndexerExecutor(handle_signals=False, tune_gc=False)
    executor.register(pool)
    assert await executor.run(MemorySource(make_checkpoints(100))) == {"Probe": 100}
    assert max(seen_window) <= 10
    assert reducer.messages == list(range(100))


async def test_reducer_that_never_closes_does_not_deadlock_a_full_window() -> None:
    class Never(RecordingReducer[int]):
        pass

    reducer = Never(max_batch_size=None, max_batch_age=None)
    result = await asyncio.wait_for(
        run_worker(Echo(), make_checkpoints(50), reducer=reducer, concurrency=2, max_inflight=8),
        5,
    )
    assert reducer.messages == list(range(50))
    assert result.watermark == 50


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"concurrency": 0}, "concurrency must be at least 1"),
        ({"max_inflight": 0}, "max_inflight must be at least 1"),
        ({"max_inflight_bytes": 0}, "max_inflight_bytes must be positive"),
        (
            {"reducer": RecordingReducer(max_batch_size=500), "max_inflight": 100},
            "max_batch_size 500 can never fill",
        ),
        ({"reducer": RecordingReducer(max_batch_size=0)}, "max_batch_size must be a positive"),
        ({"reducer": RecordingReducer(max_batch_bytes=0)}, "max_batch_bytes must be a positive"),
        ({"reducer": RecordingReducer(max_batch_age=0)}, "max_batch_age must be > 0"),
    ],
)
def test_bad_pool_settings_are_configuration_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        WorkerPool(Echo(), **options)


def test_bad_retry_settings_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="max_attempts must be >= 1"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ConfigurationError, match="on_exhausted must be"):
        RetryPolicy(on_exhausted="ignore")  # type: ignore[arg-type]


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    policy = RetryPolicy(initial=1, multiplier=2, max_delay=10, jitter=0)
    assert [policy.delay(n) for n in range(1, 6)] == [1, 2, 4, 8, 10]
    assert policy.delay(5000) == 10  # no overflow on very long outages
    jittered = RetryPolicy(initial=1, multiplier=2, max_delay=10, jitter=0.5)
    delays = [jittered.delay(2) for _ in range(200)]
    assert 1 <= min(delays) < 1.5 and 2.5 < max(delays) <= 3
    assert not RetryPolicy().exhausted(10**6)
    assert RetryPolicy(max_attempts=3).exhausted(3)


class TypedCheckpoint(Checkpoint):
    pass


class Narrow(Worker[TypedCheckpoint, int]):
    async def process_checkpoint(self, checkpoint: TypedCheckpoint) -> int:
        assert isinstance(checkpoint, TypedCheckpoint)
        return checkpoint.sequence_number


async def test_worker_declares_its_checkpoint_type_through_its_generic_parameters() -> None:
    assert Narrow.checkpoint_type is TypedCheckpoint
    assert Echo.checkpoint_type is Checkpoint
    result = await run_worker(Narrow(), make_checkpoints(5))
    assert result.messages == [0, 1, 2, 3, 4]


async def test_a_reducer_commit_error_on_stop_does_not_hang() -> None:
    reducer = FlakyReducer(10**9, max_batch_size=3, max_batch_age=None, commit_retry=FAST)
    executor = IndexerExecutor(handle_signals=False, tune_gc=False)
    executor.register(WorkerPool(Echo(), reducer=reducer, name="p"))
    run = asyncio.create_task(executor.run(MemorySource(make_checkpoints(10))))
    while not reducer.attempts:
        await asyncio.sleep(0.001)
    executor.request_stop()
    assert await asyncio.wait_for(run, 2) == {"p": 0}


# -- ReadyQueue -----------------------------------------------------------------------------------


async def test_ready_queue_gives_the_lowest_first_and_wakes_waiting_tasks() -> None:
    """New checkpoints come in order (``put``); one rescheduled (``put_back``) goes ahead of any
    higher one, wherever it is queued."""
    from indexer.pipeline.processor import ReadyQueue

    queue = ReadyQueue()
    assert queue.pop() is None
    waiting = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.put((7, "seven"))
    assert await asyncio.wait_for(waiting, 1.0) == (7, "seven")
    for n in (8, 10, 12):
        queue.put((n, str(n)))
    queue.put_back((9, "9"))
    queue.put_back((3, "3"))
    queue.put_back((11, "11"))
    assert len(queue) == 6
    got = [queue.pop(), await queue.get(), queue.pop(), queue.pop(), queue.pop(), queue.pop()]
    assert [n for n, _ in got] == [3, 8, 9, 10, 11, 12]
    assert queue.pop() is None
    waiting = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.put_back((2, "2"))  # put_back wakes a waiting task too
    assert await asyncio.wait_for(waiting, 1.0) == (2, "2")


async def test_ready_queue_passes_a_wake_on_when_the_woken_task_is_cancelled() -> None:
    """Two tasks wait; an item arrives and wakes the first, which is cancelled before it runs:
    the item must go to the second, not sit in the queue while it waits."""
    from indexer.pipeline.processor import ReadyQueue

    queue = ReadyQueue()
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.put((1, "one"))
    first.cancel()
    assert await asyncio.wait_for(second, 1.0) == (1, "one")
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_ready_queue_wakes_more_tasks_only_for_items_left_over() -> None:
    """A run of items wakes one idle task at once, the others only for what it left: a task
    that takes the whole run without suspending leaves the others' waits undisturbed, and
    tasks that suspend on their items get one item each."""
    from indexer.pipeline.processor import ReadyQueue

    queue = ReadyQueue()
    taken: dict[int, list[int]] = {i: [] for i in range(4)}
    release = asyncio.Event()

    async def greedy(i: int) -> None:  # takes all it can without suspending
        n, _ = await queue.get()
        taken[i].append(n)
        while (item := queue.pop()) is not None:
            taken[i].append(item[0])

    tasks = [asyncio.create_task(greedy(i)) for i in range(4)]
    await asyncio.sleep(0)
    waits = list(queue._idle)
    queue.put_run([(n, None) for n in range(10)])
    for _ in range(3):
        await asyncio.sleep(0)
    assert sorted(len(t) for t in taken.values()) == [0, 0, 0, 10]
    assert list(queue._idle) == waits[1:]  # the same waits: nobody else was woken
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    async def patient(i: int) -> None:  # suspends on each item
        while True:
            n, _ = await queue.get()
            taken[i].append(n)
            await release.wait()

    taken = {i: [] for i in range(4)}
    tasks = [asyncio.create_task(patient(i)) for i in range(4)]
    await asyncio.sleep(0)
    queue.put_run([(n, None) for n in range(10)])
    for _ in range(3):
        await asyncio.sleep(0)
    assert sorted(n for t in taken.values() for n in t) == [0, 1, 2, 3]  # all four busy
    assert len(queue) == 6
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

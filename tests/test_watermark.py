"""WatermarkTracker: the contiguous completed prefix and the bounded window."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indexer.pipeline.watermark import WatermarkTracker


def tracked(start: int, count: int, **options: int) -> WatermarkTracker:
    tracker = WatermarkTracker(start, max_count=max(count, 1), **options)
    for n in range(start, start + count):
        tracker.admit_nowait(n)
    return tracker


def test_out_of_order_completions_raise_the_watermark_only_over_a_contiguous_prefix() -> None:
    tracker = tracked(1, 3)
    assert tracker.watermark == 1
    assert tracker.complete(2) == []
    assert tracker.watermark == 1  # 1 is still incomplete
    assert [n for n, _ in tracker.complete(1)] == [1, 2]
    assert tracker.watermark == 3
    assert tracker.complete(3) == [(3, None)]
    assert tracker.watermark == 4  # exclusive: the next checkpoint not yet done


def test_reverse_completion_of_a_thousand() -> None:
    tracker = tracked(0, 1000)
    for n in range(999, 0, -1):
        assert tracker.complete(n, value=n) == []
        assert tracker.watermark == 0
    released = tracker.complete(0, value=0)
    assert [n for n, _ in released] == list(range(1000))
    assert [v for _, v in released] == list(range(1000))
    assert tracker.watermark == 1000
    assert tracker.pending == 0


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=200), st.randoms(use_true_random=False))
def test_random_orders_never_pass_an_incomplete_checkpoint(count: int, rnd: random.Random) -> None:
    start = 17
    tracker = tracked(start, count)
    order = list(range(start, start + count))
    rnd.shuffle(order)
    incomplete = set(order)
    released_all: list[int] = []
    for n in order:
        released = tracker.complete(n)
        incomplete.discard(n)
        released_all.extend(seq for seq, _ in released)
        # The watermark is below every incomplete checkpoint and nothing below it is incomplete.
        assert all(tracker.watermark <= k for k in incomplete)
        assert tracker.watermark == (min(incomplete) if incomplete else start + count)
    assert released_all == list(range(start, start + count))  # each released once, in order


def test_completing_twice_or_untracked_raises() -> None:
    tracker = tracked(5, 3)
    tracker.complete(6)
    with pytest.raises(ValueError, match="completed twice"):
        tracker.complete(6)
    tracker.complete(5)
    with pytest.raises(ValueError, match="completed twice"):
        tracker.complete(5)
    with pytest.raises(ValueError, match="never tracked"):
        tracker.complete(9)
    assert tracker.watermark == 7  # state intact after the errors
    assert tracker.complete(7) == [(7, None)]


def test_admission_must_rise() -> None:
    tracker = tracked(0, 3)
    with pytest.raises(ValueError, match="out of order"):
        tracker.admit_nowait(2)


def test_admit_run_tracks_consecutive_numbers_or_nothing() -> None:
    tracker = WatermarkTracker(5, max_count=100, max_bytes=None)
    assert tracker.admit_run([5, 6, 7], [10, 20, 30])
    assert (tracker.watermark, tracker.pending, tracker.incomplete) == (5, 3, 3)
    assert tracker.window_bytes == 60
    refused = ([8, 10], [9, 8], [7], [7, 8])  # not consecutive, falling, already admitted
    for numbers in refused:
        assert not tracker.admit_run(numbers, [1] * len(numbers)), numbers
    assert (tracker.pending, tracker.window_bytes) == (3, 60)  # nothing of them was tracked
    assert tracker.admit_run([8, 9], [1, 1])
    assert [n for n, _ in tracker.complete(5)] == [5]
    assert tracker.complete(7) == []
    assert [n for n, _ in tracker.complete(6)] == [6, 7]
    assert tracker.watermark == 8


async def test_full_window_blocks_admission_until_release() -> None:
    tracker = WatermarkTracker(0, max_count=2)
    await tracker.admit(0)
    await tracker.admit(1)
    blocked = asyncio.create_task(tracker.admit(2))
    await asyncio.sleep(0.01)
    assert not blocked.done()
    tracker.complete(1)  # out of order: frees nothing
    await asyncio.sleep(0.01)
    assert not blocked.done()
    tracker.complete(0)
    await asyncio.wait_for(blocked, 1)
    assert tracker.last_admitted == 2


async def test_window_held_until_explicit_release() -> None:
    tracker = WatermarkTracker(0, max_count=1, release_on_complete=False)
    await tracker.admit(0)
    tracker.complete(0)
    assert tracker.watermark == 1
    blocked = asyncio.create_task(tracker.admit(1))
    await asyncio.sleep(0.01)
    assert not blocked.done()  # completed but not committed still fills the window
    tracker.release(1)
    await asyncio.wait_for(blocked, 1)


async def test_on_blocked_is_called_when_admission_waits() -> None:
    tracker = WatermarkTracker(0, max_count=1)
    calls: list[int] = []
    tracker.on_blocked = lambda: calls.append(1)
    await tracker.admit(0)
    assert calls == []
    blocked = asyncio.create_task(tracker.admit(1))
    await asyncio.sleep(0)
    assert calls == [1]
    blocked.cancel()


async def test_byte_bound_and_oversized_item() -> None:
    tracker = WatermarkTracker(0, max_count=100, max_bytes=100)
    await tracker.admit(0, 60)
    await tracker.admit(1, 40)  # exactly at the cap is allowed
    blocked = asyncio.create_task(tracker.admit(2, 1))
    await asyncio.sleep(0.01)
    assert not blocked.done()
    tracker.complete(0)
    await asyncio.wait_for(blocked, 1)
    tracker.complete(1)
    tracker.complete(2)
    assert tracker.window_bytes == 0
    # An item bigger than the whole cap is admitted into an empty window.
    await asyncio.wait_for(tracker.admit(3, 1000), 1)
    assert tracker.window_bytes == 1000


async def test_cancelled_admission_returns_promptly_and_tracks_nothing() -> None:
    tracker = WatermarkTracker(0, max_count=1)
    await tracker.admit(0)
    blocked = asyncio.create_task(tracker.admit(1))
    other = asyncio.create_task(tracker.admit(1))
    await asyncio.sleep(0.01)
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(blocked, 0.5)
    assert tracker.pending == 1
    # The other waiter was not woken by the cancellation and still gets in after a release.
    assert not other.done()
    tracker.complete(0)
    await asyncio.wait_for(other, 1)
    assert tracker.last_admitted == 1


async def test_admission_cancelled_before_it_waits() -> None:
    tracker = WatermarkTracker(0, max_count=1)
    await tracker.admit(0)

    async def admit_after_cancel() -> None:
        asyncio.current_task().cancel()  # type: ignore[union-attr]
        await tracker.admit(1)

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(admit_after_cancel(), 0.5)
    assert tracker.pending == 1

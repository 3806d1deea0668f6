"""Watermark tracking over out-of-order completions, with a bounded in-flight window.

The reader admits checkpoints in sequence order; workers complete them in any order. The
watermark is the first admitted checkpoint not yet completed (an exclusive bound), so it never
passes an incomplete checkpoint. The window holds every admitted checkpoint that has not been
released yet; without a reducer a checkpoint is released as soon as the watermark passes it,
with one it is released when the commit that covers it succeeds. Admission blocks while the
window is full, which is the framework's only memory bound.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["WatermarkTracker"]


class WatermarkTracker:
    """The contiguous completed prefix of admitted checkpoints, and the window that bounds them.

    ``start`` is the first checkpoint that will be admitted (the initial watermark).
    ``max_count`` bounds the number of admitted, unreleased checkpoints; ``max_bytes`` (optional)
    bounds the sum of their weights. An item heavier than ``max_bytes`` is still admitted into an
    empty window, so nothing can be stuck forever. With ``release_on_complete`` the window frees
    a checkpoint as soon as the watermark passes it; otherwise ``release(upto)`` frees it.
    """

    __slots__ = (
        "_done",
        "_incomplete",
        "_order",
        "_release_on_complete",
        "_space",
        "_window",
        "max_bytes",
        "max_count",
        "on_blocked",
        "watermark",
        "window_bytes",
    )

    def __init__(
        self,
        start: int = 0,
        *,
        max_count: int = 1024,
        max_bytes: int | None = None,
        release_on_complete: bool = True,
    ) -> None:
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        if max_count < 1:
            raise ValueError(f"max_count must be >= 1, got {max_count}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1 or None, got {max_bytes}")
        self.watermark = start
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.window_bytes = 0
        #: Called (without arguments) when an admission has to wait for space.
        self.on_blocked: Callable[[], None] | None = None
        self._release_on_complete = release_on_complete
        self._order: deque[int] = deque()  # admitted, not yet passed by the watermark
        self._done: dict[int, Any] = {}  # completed, waiting behind an incomplete one
        self._incomplete: set[int] = set()
        self._window: deque[tuple[int, int]] = deque()  # (sequence_number, weight) unreleased
        self._space: asyncio.Future[None] | None = None

    @property
    def pending(self) -> int:
        """Admitted checkpoints still in the window (completed or not)."""
        return len(self._window)

    @property
    def incomplete(self) -> int:
        """Admitted checkpoints the watermark has not passed yet."""
        return len(self._order)

    @property
    def is_blocked(self) -> bool:
        """True while an admission waits for room in the window."""
        return self._space is not None and not self._space.done()

    @property
    def last_admitted(self) -> int | None:
        """The highest admitted sequence number, or None before the first admission."""
        return self._window[-1][0] if self._window else None

    def has_room(self, weight: int) -> bool:
        """Whether a checkpoint of ``weight`` would be admitted now without waiting."""
        if not self._window:
            return True
        if len(self._window) >= self.max_count:
            return False
        return self.max_bytes is None or self.window_bytes + weight <= self.max_bytes

    async def admit(self, sequence_number: int, weight: int = 0) -> None:
        """Track ``sequence_number``, waiting while the window is full.

        Sequence numbers must rise. If the waiting task is cancelled, nothing is tracked and the
        cancellation propagates at once.
        """
        while not self.has_room(weight):
            if self._space is None or self._space.done():
                self._space = asyncio.get_running_loop().create_future()
            if self.on_blocked is not None:
                self.on_blocked()
            await asyncio.shield(self._space)
        self.admit_nowait(sequence_number, weight)

    def admit_nowait(self, sequence_number: int, weight: int = 0) -> None:
        """Track ``sequence_number`` without checking the window (the caller made room)."""
        last = self._order[-1] if self._order else self.watermark - 1
        if sequence_number <= last or sequence_number < self.watermark:
            raise ValueError(
                f"checkpoint {sequence_number} admitted out of order (after {last}, "
                f"watermark {self.watermark})"
            )
        if not self._order:
            self.watermark = sequence_number
        self._order.append(sequence_number)
        self._incomplete.add(sequence_number)
        self._window.append((sequence_number, weight))
        self.window_bytes += weight

    def admit_run(self, numbers: list[int], weights: list[int]) -> bool:
        """Track consecutive ``numbers`` (n, n+1, ...) at once without checking the window
        (the caller made room); False, having done nothing, when they are not consecutive or
        do not follow what was admitted (``admit_nowait`` one by one then says why)."""
        if not numbers:
            return True
        first = numbers[0]
        last = self._order[-1] if self._order else self.watermark - 1
        if first <= last or numbers != list(range(first, first + len(numbers))):
            return False
        if not self._order:
            self.watermark = first
        self._order.extend(numbers)
        self._incomplete.update(numbers)
        self._window.extend(zip(numbers, weights, strict=True))
        self.window_bytes += sum(weights)
        return True

    def complete(self, sequence_number: int, value: Any = None) -> list[tuple[int, Any]]:
        """Mark ``sequence_number`` done; returns the ``(sequence_number, value)`` pairs that the
        watermark passed because of it, in order (empty when it completed out of order)."""
        order = self._order
        done = self._done
        try:
            self._incomplete.remove(sequence_number)
        except KeyError:
            if sequence_number in done or sequence_number < self.watermark:
                raise ValueError(f"checkpoint {sequence_number} completed twice") from None
            raise ValueError(f"checkpoint {sequence_number} was never tracked") from None
        if sequence_number != order[0]:
            done[sequence_number] = value
            return []
        order.popleft()
        released = [(sequence_number, value)]
        last = sequence_number
        if done:
            while order and order[0] in done:
                last = order.popleft()
                released.append((last, done.pop(last)))
        self.watermark = watermark = order[0] if order else last + 1
        if self._release_on_complete:  # ``release(watermark)``, inlined: once per checkpoint
            window = self._window
            freed = 0
            while window and window[0][0] < watermark:
                freed += window.popleft()[1]
            self.window_bytes -= freed
            space = self._space
            if space is not None and not space.done():
                space.set_result(None)
        return released

    def release(self, upto: int) -> None:
        """Free the window's checkpoints below ``upto`` (never past the watermark)."""
        upto = min(upto, self.watermark)
        window = self._window
        freed = 0
        while window and window[0][0] < upto:
            freed += window.popleft()[1]
        self.window_bytes -= freed
        space = self._space
        if space is not None and not space.done():
            space.set_result(None)

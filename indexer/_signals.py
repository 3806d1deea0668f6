"""Stop signals (SIGINT, SIGTERM, SIGHUP) routed to a callback on the running event loop, and the
two-signal protocol of a run (graceful, then at once)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator

from ._log import log

__all__ = ["STOP_SIGNALS", "TwoSignalStop", "stop_signals"]

#: The signals that stop a run: Ctrl+C, a supervisor's stop, a hang-up of its terminal or
#: SSH session.
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


@contextlib.contextmanager
def stop_signals(callback: Callable[[int], None], enabled: bool = True) -> Iterator[None]:
    """While inside, the ``STOP_SIGNALS`` call ``callback(signum)`` on the running loop instead of
    their default action; nothing is installed when ``enabled`` is false, or where the loop
    cannot take signal handlers (not the main thread, no signal support)."""
    installed: list[signal.Signals] = []
    loop = asyncio.get_running_loop()
    if enabled:
        for signum in STOP_SIGNALS:
            try:
                loop.add_signal_handler(signum, callback, signum)
            except (RuntimeError, ValueError, NotImplementedError):
                continue
            installed.append(signum)
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


class TwoSignalStop:
    """What a run does with stop signals: the first asks it to stop gracefully
    (``request_stop``, logged as ``stopping``), the second cancels the task that runs it at
    once (``aborted`` then tells why it was cancelled). ``forward`` is told of every signal."""

    def __init__(
        self,
        stopping: str,
        request_stop: Callable[[], None],
        forward: Callable[[int], None] | None = None,
    ) -> None:
        self.stopping = stopping
        self.request_stop = request_stop
        self.forward = forward
        self.received = 0
        self._task: asyncio.Task[object] | None = None

    @property
    def aborted(self) -> bool:
        """Whether a second signal cancelled the run."""
        return self.received >= 2

    @contextlib.contextmanager
    def handling(self, enabled: bool = True) -> Iterator[None]:
        """While inside, signals stop the current task's run (when ``enabled``: a run that
        is part of another, such as a chunk's, leaves them to it)."""
        self.received = 0
        self._task = asyncio.current_task()
        try:
            with stop_signals(self, enabled):
                yield
        finally:
            self._task = None

    def __call__(self, signum: int) -> None:
        if self.forward is not None:
            self.forward(signum)
        self.received += 1
        if self.received == 1:
            log.info(self.stopping, signal=signum)
            self.request_stop()
        elif self._task is not None:
            self._task.cancel()

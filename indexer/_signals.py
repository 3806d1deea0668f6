"""Stop signals (SIGINT, SIGTERM) routed to a callback on the running event loop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator

__all__ = ["stop_signals"]


@contextlib.contextmanager
def stop_signals(callback: Callable[[int], None], enabled: bool = True) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM call ``callback(signum)`` on the running loop instead of
    their default action; nothing is installed when ``enabled`` is false, or where the loop
    cannot take signal handlers (not the main thread, no signal support)."""
    installed: list[signal.Signals] = []
    loop = asyncio.get_running_loop()
    if enabled:
        for signum in (signal.SIGINT, signal.SIGTERM):
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

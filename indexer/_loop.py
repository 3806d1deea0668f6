"""The event loop a command runs on: uvloop when it is installed, else asyncio's own.

uvloop's timers and callbacks are cheaper than asyncio's, and they are most of the framework's
overhead for I/O-bound workers (ARCHITECTURE.md, Performance notes). ``run.event_loop``
picks one explicitly; ``"auto"`` takes uvloop when it can be imported (not on Windows).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

from .errors import ConfigurationError

if TYPE_CHECKING:
    import asyncio

__all__ = ["EVENT_LOOPS", "EventLoopName", "loop_factory", "run_on"]

T = TypeVar("T")
EventLoopName = Literal["auto", "uvloop", "asyncio"]
#: The names ``run.event_loop`` and ``--event-loop`` accept.
EVENT_LOOPS: list[str] = list(get_args(EventLoopName))


def loop_factory(name: str = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory for ``name`` (None: asyncio's default); ``"uvloop"`` without it installed
    is a ConfigurationError."""
    if name == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if name == "uvloop":
            raise ConfigurationError(
                "run.event_loop = 'uvloop', but uvloop is not installed (pip install uvloop)"
            ) from None
        return None
    return uvloop.new_event_loop


def run_on(name: str, main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the event loop ``name`` picks."""
    import asyncio  # here: the command's start-up (``indexer --help``) needs no event loop

    try:
        factory = loop_factory(name)
    except BaseException:
        main.close()
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)

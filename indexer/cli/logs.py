"""structlog set-up: readable with colours on a terminal, JSON lines otherwise or when asked."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, TextIO

from .._dsn import mask_dsn

__all__ = ["LineWriter", "configure_logging", "mask_secrets"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS["error"] = logging.ERROR


class LineWriter:
    """A structlog logger that writes each line with one ``write(2)``: processes sharing the
    stream (``--processes N``) never interleave parts of lines, as two writes per line (the
    line, then its newline) did. A closed stream (a reader gone: ``indexer run | head``) is
    ignored: logging never breaks or blocks a shutdown. While ``divert`` is set (live progress
    bars on the terminal), lines go to it instead, to be printed above the bars."""

    #: Where every writer's lines go instead of their stream, when set.
    divert: Callable[[str], None] | None = None

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
            self._fd = None  # an in-memory stream (tests): one write call is enough

    def msg(self, message: str) -> None:
        divert = LineWriter.divert
        if divert is not None:
            divert(message)
            return
        line = f"{message}\n"
        try:
            if self._fd is None:
                self._stream.write(line)
                self._stream.flush()
                return
            data = line.encode()
            while data:
                data = data[os.write(self._fd, data) :]
        except (BrokenPipeError, ValueError):  # reader gone, or the stream closed
            pass

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def mask_secrets(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """A structlog processor: every field of a line with its passwords masked (``mask_dsn``),
    whichever code logged a connection string, in an error or otherwise."""
    return mask_dsn(event_dict)


#: Whether structlog was imported while rich was hidden (``_import_structlog``).
_without_rich = False


def _import_structlog(console: bool) -> None:
    """Import structlog: for JSON lines without rich, when neither is imported yet.

    structlog imports rich when it is installed, for the console renderer's tracebacks (30 ms
    and more of a run's start-up) that JSON lines never draw: rich is hidden while structlog
    is imported (``import rich`` fails), and imported again with it once a console with
    tracebacks drawn by rich is configured in the same process."""
    global _without_rich
    if not console and "structlog" not in sys.modules and "rich" not in sys.modules:
        sys.modules["rich"] = None  # type: ignore[assignment]
        try:
            import structlog
        finally:
            del sys.modules["rich"]
        _without_rich = True
        return
    import structlog

    if console and _without_rich:
        _without_rich = False
        importlib.reload(structlog.tracebacks)  # the same modules, now with rich
        importlib.reload(structlog.dev)


def configure_logging(
    level: str = "info", format: str = "auto", stream: TextIO | None = None
) -> None:
    """Configure structlog for the CLI: ``format`` is ``auto`` (console on a terminal, JSON
    otherwise), ``console`` or ``json``; lines below ``level`` cost one comparison. A line's
    ``exc_info`` traceback is one JSON field (``exception``), or drawn below it on a console."""
    stream = stream if stream is not None else sys.stderr
    if format == "auto":
        format = "console" if stream.isatty() else "json"
    tty = stream.isatty()
    _import_structlog(console=format == "console" and tty)
    import structlog

    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if format == "json":
        processors += [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ]
    else:
        # Tracebacks without the frames' locals, which hold checkpoints and may hold secrets:
        # drawn by rich on a terminal, plain text elsewhere.
        traceback: Any = (
            structlog.dev.RichTracebackFormatter(show_locals=False)
            if tty
            else structlog.dev.plain_traceback
        )
        processors.append(structlog.dev.ConsoleRenderer(colors=tty, exception_formatter=traceback))
    processors.insert(-1, mask_secrets)  # just before the renderer: the fields as printed
    writer = LineWriter(stream)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=lambda *args: writer,
        cache_logger_on_first_use=False,
    )

"""The framework's logger: structlog's once the application has configured structlog (the
``indexer`` command does), else the standard library's ``indexer`` logger.

A library used from code should not print: unconfigured, structlog would print every line to
stdout with its development renderer. Instead the lines go to ``logging.getLogger("indexer")``,
which has a ``NullHandler`` as libraries' loggers do, so they appear only where the
application configured ``logging``; ``event key=value ...`` is their message.

``exc_info=exception`` adds the exception's traceback: structlog renders it (in one JSON field,
or below the line on a console), the standard library below the message.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

__all__ = ["Logger", "log"]

_stdlib = logging.getLogger("indexer")
_stdlib.addHandler(logging.NullHandler())


class Logger:
    """``log.info("event", key=value, ...)``, routed as the module docstring says."""

    __slots__ = ("name",)

    def __init__(self, name: str = "indexer") -> None:
        self.name = name

    def _emit(self, level: int, method: str, event: str, fields: dict[str, Any]) -> None:
        # An application that configured structlog has imported it: importing it here would
        # slow every user's start-up (it brings rich along).
        structlog = sys.modules.get("structlog")
        if structlog is not None and structlog.is_configured():
            getattr(structlog.get_logger(self.name), method)(event, **fields)
            return
        logger = logging.getLogger(self.name)
        if logger.isEnabledFor(level):
            exc_info = fields.pop("exc_info", None)
            pairs = " ".join(f"{key}={value!r}" for key, value in fields.items())
            logger.log(level, "%s %s" if pairs else "%s%s", event, pairs, exc_info=exc_info)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, "debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, "info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, "warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, "error", event, fields)


#: The logger every module of the framework writes to.
log = Logger()

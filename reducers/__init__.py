"""Ready-made Reducers (sinks), usable from code or from the config by import string."""

from .sqlite import SqliteSink

__all__ = ["SqliteSink"]

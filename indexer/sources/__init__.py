"""Checkpoint sources: a local directory feed, a synthetic generator and an in-memory list.

The in-memory source and the feed writer load on first use (PEP 562): ``indexer run`` reads a
directory and needs neither.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes
from ._base import CheckpointSource, SourcedBatch
from .local import LocalDirectorySource
from .synthetic import SyntheticSource

if TYPE_CHECKING:
    from .feed_writer import write_checkpoint_file, write_feed
    from .memory import MemorySource

__all__ = [
    "CheckpointSource",
    "LocalDirectorySource",
    "MemorySource",
    "SourcedBatch",
    "SyntheticSource",
    "write_checkpoint_file",
    "write_feed",
]

_HOMES = {
    "MemorySource": ".memory",
    "write_checkpoint_file": ".feed_writer",
    "write_feed": ".feed_writer",
}

__getattr__ = lazy_attributes(__name__, _HOMES)

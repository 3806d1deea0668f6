"""Checkpoint sources: a local directory feed, a synthetic generator and an in-memory list."""

from ._base import CheckpointSource, SourcedBatch
from .feed_writer import write_checkpoint_file, write_feed
from .local import LocalDirectorySource
from .memory import MemorySource
from .synthetic import SyntheticSource

__all__ = [
    "CheckpointSource",
    "LocalDirectorySource",
    "MemorySource",
    "SourcedBatch",
    "SyntheticSource",
    "write_checkpoint_file",
    "write_feed",
]

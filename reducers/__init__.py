"""Ready-made Reducers (sinks), usable from code or from the config by import string."""

from .archive import ArchivedCheckpoint, ArchiveReader, ArchiveSink, read_archive
from .counts import CounterSink
from .jsonl import JsonlSink, rotated_files
from .postgres import PostgresSink
from .sqlite import SqliteSink

__all__ = [
    "ArchiveReader",
    "ArchiveSink",
    "ArchivedCheckpoint",
    "CounterSink",
    "JsonlSink",
    "PostgresSink",
    "SqliteSink",
    "read_archive",
    "rotated_files",
]

"""Ready-made Reducers (sinks), usable from code or from the config by import string.

Each name loads its module on first use (PEP 562), so that a job naming ``reducers:SqliteSink``
does not import the PostgreSQL driver, zstandard or the other sinks.
"""

from typing import TYPE_CHECKING

from indexer._lazy import lazy_attributes

if TYPE_CHECKING:
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

#: Public name -> the module that defines it.
_HOMES = {
    "ArchiveReader": ".archive",
    "ArchiveSink": ".archive",
    "ArchivedCheckpoint": ".archive",
    "read_archive": ".archive",
    "CounterSink": ".counts",
    "JsonlSink": ".jsonl",
    "rotated_files": ".jsonl",
    "PostgresSink": ".postgres",
    "SqliteSink": ".sqlite",
}

__getattr__ = lazy_attributes(__name__, _HOMES)


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])

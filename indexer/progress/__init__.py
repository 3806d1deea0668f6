"""Progress stores: where each pipeline's watermark and dead letters are kept."""

from ._base import DeadLetter, ProgressStore, TransactionalProgressStore, base_store
from .file import FileProgressStore
from .memory import MemoryProgressStore
from .postgres import PostgresProgressStore
from .sqlite import SqliteProgressStore

__all__ = [
    "DeadLetter",
    "FileProgressStore",
    "MemoryProgressStore",
    "PostgresProgressStore",
    "ProgressStore",
    "SqliteProgressStore",
    "TransactionalProgressStore",
    "base_store",
]

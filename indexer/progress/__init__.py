"""Progress stores: where each pipeline's watermark, dead letters and stalls are kept.

The database stores load their drivers (aiosqlite, asyncpg) only when first named here, so
that importing the framework does not.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes
from ._base import DeadLetter, ProgressStore, Stall, TransactionalProgressStore, base_store
from .file import FileProgressStore
from .memory import MemoryProgressStore

if TYPE_CHECKING:
    from .postgres import PostgresProgressStore
    from .sqlite import SqliteProgressStore

__all__ = [
    "DeadLetter",
    "FileProgressStore",
    "MemoryProgressStore",
    "PostgresProgressStore",
    "ProgressStore",
    "SqliteProgressStore",
    "Stall",
    "TransactionalProgressStore",
    "base_store",
]

_HOMES = {"SqliteProgressStore": ".sqlite", "PostgresProgressStore": ".postgres"}

__getattr__ = lazy_attributes(__name__, _HOMES)

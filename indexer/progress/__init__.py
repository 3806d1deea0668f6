"""Progress stores: where each pipeline's watermark, dead letters and stalls are kept.

The database stores load their drivers (aiosqlite, asyncpg) only when first named here, so
that importing the framework does not; the file store loads when first named too.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes
from ._base import DeadLetter, ProgressStore, Stall, TransactionalProgressStore, base_store
from .memory import MemoryProgressStore

if TYPE_CHECKING:
    from .file import FileProgressStore
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

_HOMES = {
    "FileProgressStore": ".file",
    "SqliteProgressStore": ".sqlite",
    "PostgresProgressStore": ".postgres",
}

__getattr__ = lazy_attributes(__name__, _HOMES)

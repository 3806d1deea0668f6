"""Progress stores: where each pipeline's watermark and dead letters are kept.

The database stores load their drivers (aiosqlite, asyncpg) only when first named here, so
that importing the framework does not.
"""

from typing import TYPE_CHECKING, Any

from ._base import DeadLetter, ProgressStore, TransactionalProgressStore, base_store
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
    "TransactionalProgressStore",
    "base_store",
]


def __getattr__(name: str) -> Any:
    if name == "SqliteProgressStore":
        from .sqlite import SqliteProgressStore

        return SqliteProgressStore
    if name == "PostgresProgressStore":
        from .postgres import PostgresProgressStore

        return PostgresProgressStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Base classes for sinks that write into a SQL database (``DatabaseSink``): exactly once when
they share the progress store's database, at least once on a database of their own.

``SqliteDatabaseSink`` and ``PostgresDatabaseSink`` (and the helpers below) load their drivers
only when first named. ``quote_ident`` checks and quotes a PostgreSQL identifier,
``create_missing`` creates a PostgreSQL schema, tables and indexes that are missing, and
``on_thread`` runs a function on an aiosqlite connection's thread in one hop, and
``insert_rows`` inserts many rows into SQLite in a few statements (not one per row).
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes
from ._base import DatabaseSink

if TYPE_CHECKING:
    from .._postgres import create_missing, quote_ident
    from .._sqlite import insert_rows, on_thread
    from .postgres import PostgresDatabaseSink
    from .sqlite import SqliteDatabaseSink

__all__ = [
    "DatabaseSink",
    "PostgresDatabaseSink",
    "SqliteDatabaseSink",
    "create_missing",
    "insert_rows",
    "on_thread",
    "quote_ident",
]

#: Name -> the module that defines it, imported on first use.
_HOMES = {
    "SqliteDatabaseSink": ".sqlite",
    "PostgresDatabaseSink": ".postgres",
    "create_missing": ".._postgres",
    "quote_ident": ".._postgres",
    "on_thread": ".._sqlite",
    "insert_rows": ".._sqlite",
}

__getattr__ = lazy_attributes(__name__, _HOMES)

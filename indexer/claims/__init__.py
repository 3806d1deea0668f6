"""Claim stores: TTL leases on chunks of a pipeline's range, for many processes and machines.

The SQLite and PostgreSQL stores load their drivers only when first named here.
"""

from typing import TYPE_CHECKING, Any

from ._base import ChunkLayout, ChunkState, Claim, ClaimLost, ClaimNotFound, ClaimStore

if TYPE_CHECKING:
    from .postgres import PostgresClaimStore
    from .sqlite import SqliteClaimStore

__all__ = [
    "ChunkLayout",
    "ChunkState",
    "Claim",
    "ClaimLost",
    "ClaimNotFound",
    "ClaimStore",
    "PostgresClaimStore",
    "SqliteClaimStore",
]


def __getattr__(name: str) -> Any:
    if name == "SqliteClaimStore":
        from .sqlite import SqliteClaimStore

        return SqliteClaimStore
    if name == "PostgresClaimStore":
        from .postgres import PostgresClaimStore

        return PostgresClaimStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

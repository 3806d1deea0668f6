"""Claim stores: TTL leases on chunks of a pipeline's range, for many processes and machines.

The SQLite and PostgreSQL stores load their drivers only when first named here.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes
from ._base import WHOLE, ChunkLayout, ChunkState, Claim, ClaimLost, ClaimNotFound, ClaimStore

if TYPE_CHECKING:
    from .postgres import PostgresClaimStore
    from .sqlite import SqliteClaimStore

__all__ = [
    "WHOLE",
    "ChunkLayout",
    "ChunkState",
    "Claim",
    "ClaimLost",
    "ClaimNotFound",
    "ClaimStore",
    "PostgresClaimStore",
    "SqliteClaimStore",
]

_HOMES = {"SqliteClaimStore": ".sqlite", "PostgresClaimStore": ".postgres"}

__getattr__ = lazy_attributes(__name__, _HOMES)

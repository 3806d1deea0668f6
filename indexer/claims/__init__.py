"""Claim stores: TTL leases on chunks of a pipeline's range, for many processes and machines."""

from ._base import ChunkLayout, ChunkState, Claim, ClaimLost, ClaimNotFound, ClaimStore
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

"""Claim stores: TTL leases on chunks of a pipeline's range, for many processes and machines."""

from ._base import ChunkState, Claim, ClaimLost, ClaimNotFound, ClaimStore
from .postgres import PostgresClaimStore
from .sqlite import SqliteClaimStore

__all__ = [
    "ChunkState",
    "Claim",
    "ClaimLost",
    "ClaimNotFound",
    "ClaimStore",
    "PostgresClaimStore",
    "SqliteClaimStore",
]

"""Scale-out: a job cut into chunks leased from a claim store, run by many processes."""

from .progress import ChunkProgressStore
from .runner import ChunkedRunner

__all__ = ["ChunkProgressStore", "ChunkedRunner"]

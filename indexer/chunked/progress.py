"""ChunkProgressStore: the progress store a pipeline sees while it runs one leased chunk."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

from ..claims import Claim, ClaimStore
from ..progress import ProgressStore
from ..progress._base import FencedView

__all__ = ["ChunkProgressStore"]


class ChunkProgressStore(FencedView):
    """Maps a pipeline's watermark onto its chunk's progress, every write fenced by the lease.

    ``load`` is the chunk's saved progress (or the pipeline's own watermark when that is further
    inside the chunk); ``save`` and ``transaction`` write the chunk's progress only while the
    lease is live, so a process that lost its lease changes nothing (``ClaimLost``). Dead
    letters go to the pipeline's ``inner`` store. A sink whose database is the claim store's
    (``inner`` is the progress store on that same database) writes its rows in the fenced
    transaction: exactly once even when a lease moves to another process.
    """

    def __init__(self, inner: ProgressStore, claims: ClaimStore, claim: Claim, floor: int) -> None:
        self.inner = inner
        self.claims = claims
        self.claim = claim
        #: Where the chunk starts, or the pipeline's saved watermark if that is higher.
        self.floor = floor

    async def open(self) -> None:
        await self.claims.open()
        await self.inner.open()
        await super().open()

    async def load(self, pipeline: str) -> int | None:
        saved = await self.claims.progress(self.claim.pipeline, self.claim.chunk)
        return max(saved or 0, self.floor)

    async def save(self, pipeline: str, watermark: int) -> int:
        await self.claims.save_progress(self.claim, watermark)
        return watermark

    def transaction(
        self, pipeline: str, watermark: int, *, recheck: bool = False
    ) -> AbstractAsyncContextManager[Any]:
        return self.claims.fenced(self.claim, watermark, recheck=recheck)

    async def reset(self, pipeline: str, watermark: int) -> None:
        raise NotImplementedError("reset a chunked pipeline through its progress store")

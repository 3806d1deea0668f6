"""One writer per pipeline on a database store: a run's leases on the pipelines it writes, and
the store it writes through, every write fenced by its lease."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from ..errors import AlreadyCommitted, FencingError, ProgressStoreError
from ._base import FencedView, TransactionalProgressStore

if TYPE_CHECKING:
    from ..claims import Claim, ClaimStore

__all__ = ["LeasedProgressStore", "hold_with_leases"]


class LeasedProgressStore(FencedView):
    """What a run without chunks writes through: ``save`` and ``transaction`` raise the
    watermark in a transaction of the claim store that holds the pipeline's lease checked and
    locked (``ClaimStore.fenced``), so a run that lost its lease writes nothing. The rest goes
    to ``inner``, the real store (which ``base_store`` finds: a sink that shares its database
    writes in the fenced transaction)."""

    inner: DatabaseStore

    def __init__(self, inner: DatabaseStore, claims: ClaimStore, leases: dict[str, Claim]) -> None:
        self.inner = inner
        self.claims = claims
        self.leases = leases

    async def save(self, pipeline: str, watermark: int) -> int:
        async with self.claims.fenced(self.leases[pipeline]) as connection:
            return await self.inner.raise_watermark(connection, pipeline, watermark)

    @asynccontextmanager
    async def transaction(
        self, pipeline: str, watermark: int, *, recheck: bool = False
    ) -> AsyncIterator[Any]:
        lease = self.leases[pipeline]
        async with self.claims.fenced(lease) as connection:
            if recheck:  # the lease row is locked: an earlier attempt has ended, one way or other
                stored = await self.inner.watermark_in(connection, pipeline)
                AlreadyCommitted.check(pipeline, stored, watermark)
            yield connection
            await self.inner.raise_watermark(connection, pipeline, watermark)


class DatabaseStore(TransactionalProgressStore):
    """A store whose database also keeps leases: SQLite and PostgreSQL."""

    def claim_store(self) -> ClaimStore:
        """The claim store on this store's database (and schema)."""
        raise NotImplementedError

    async def watermark_in(self, connection: Any, pipeline: str) -> int | None:
        """``pipeline``'s stored watermark, read with ``connection`` (in its transaction)."""
        raise NotImplementedError

    async def raise_watermark(self, connection: Any, pipeline: str, watermark: int) -> int:
        """Raise ``pipeline``'s watermark (rise-only) with ``connection``, inside its open
        transaction; returns the value now stored."""
        raise NotImplementedError

    def hold(
        self,
        pipelines: Sequence[str],
        *,
        owner: str,
        ttl: float,
        on_lost: Callable[[str, str], None],
    ) -> contextlib.AbstractAsyncContextManager[TransactionalProgressStore]:
        return hold_with_leases(self, pipelines, owner=owner, ttl=ttl, on_lost=on_lost)


@asynccontextmanager
async def hold_with_leases(
    store: DatabaseStore,
    pipelines: Sequence[str],
    *,
    owner: str,
    ttl: float,
    on_lost: Callable[[str, str], None],
) -> AsyncIterator[LeasedProgressStore]:
    """Lease each of ``pipelines`` whole to ``owner`` (PipelineHeld when another writer holds
    one), keep the leases alive while inside (``on_lost(pipeline, reason)`` when one is lost),
    and release them after."""
    from ..claims.lease import hold_whole, keep_alive

    claims = store.claim_store()
    leases: dict[str, Claim] = {}
    renewals: list[asyncio.Task[None]] = []
    try:
        for pipeline in pipelines:
            leases[pipeline] = await hold_whole(claims, pipeline, owner, ttl)
        for pipeline, lease in leases.items():
            lost = _reporter(on_lost, pipeline)
            renewals.append(asyncio.create_task(keep_alive(claims, lease, ttl, lost), name="lease"))
        yield LeasedProgressStore(store, claims, leases)
    finally:
        for task in renewals:
            task.cancel()
        await asyncio.gather(*renewals, return_exceptions=True)
        for lease in leases.values():
            with contextlib.suppress(FencingError, ProgressStoreError):
                await claims.release(lease)
        await claims.close()


def _reporter(on_lost: Callable[[str, str], None], pipeline: str) -> Callable[[str], None]:
    return lambda reason: on_lost(pipeline, reason)

"""The claim store contract: chunks of a pipeline's checkpoint range leased to one owner at a time.

A pipeline's range is cut into numbered chunks (0, 1, 2, ...). A process claims a chunk with a
lease (``ttl`` seconds), renews it with ``extend`` on a heartbeat, saves the chunk's progress
fenced by the lease, and releases it (``done=True`` once the chunk is complete). A crashed
process's chunk is taken over when its lease expires, resuming from the chunk's saved progress.

Rules shared by every store:

- Chunk rows: ``ensure_chunks(pipeline, count)`` creates rows 0..count-1 up front (idempotent);
  ``claim`` of a chunk without a row creates it. ``find_available`` and ``claim_next`` only
  look at rows that exist, so a scheduler calls ``ensure_chunks`` first.
- Token: a fencing token per chunk, increased every time the chunk is claimed anew (first claim,
  after a release, after an expiry, by anyone). A live owner claiming again only renews and
  keeps its token. A write carrying an older token is refused.
- Clock: one injectable clock (``time.time`` by default) stamps and judges every lease, also on
  PostgreSQL (its values are sent as parameters; the server's ``now()`` is never used). A lease
  is live while ``clock() < expires_at``; at ``clock() == expires_at`` it has expired.
- ``extend`` and ``release`` accept a lease that expired but that nobody took since (its token
  still matches: nobody else held the chunk in between); ``save_progress`` and ``fenced``
  demand a live lease, and ``fenced`` checks it again before it commits.
- One writer per pipeline: chunk ``WHOLE`` (-1) is the lease of a run that writes the whole
  pipeline without chunks. It cannot be claimed while a chunk of the pipeline is held, and no
  chunk can be claimed while it is held, so a chunked job and a run without chunks never
  write one pipeline at the same time.
"""

from __future__ import annotations

import math
import time
from abc import abstractmethod
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import msgspec

from .._resource import Openable
from ..errors import FencingError

Clock = Callable[[], float]

#: The chunk number of the lease a run without chunks holds on its whole pipeline.
WHOLE = -1


class ClaimLost(FencingError):
    """The lease is no longer the caller's: another owner claimed the chunk, or it expired."""


class ClaimNotFound(FencingError):
    """There is no such claim: the chunk was never claimed, or the claim was released."""


class Claim(msgspec.Struct, frozen=True):
    """A lease on one chunk: who holds it, its fencing token, and when it expires (store clock)."""

    pipeline: str
    chunk: int
    owner: str
    token: int
    expires_at: float


class ChunkState(msgspec.Struct, frozen=True):
    """One chunk row as stored, for status displays; ``owner`` is None when nobody holds it.
    ``claimed_at`` is when its current token was granted, ``renewed_at`` its last renewal."""

    chunk: int
    owner: str | None
    token: int
    expires_at: float | None
    done: bool
    progress: int | None
    claimed_at: float | None = None
    renewed_at: float | None = None

    def held(self, now: float) -> bool:
        """Whether a live lease holds the chunk at ``now``."""
        return self.owner is not None and self.expires_at is not None and now < self.expires_at


class ChunkLayout(msgspec.Struct, frozen=True):
    """How a pipeline's range is cut: chunk ``n`` covers ``first + n * chunk_size`` on, for
    ``chunk_size`` checkpoints. Fixed for a pipeline once recorded: other numbers would map the
    stored chunk states onto other checkpoints."""

    first: int
    chunk_size: int

    def bounds(self, chunk: int) -> tuple[int, int]:
        """The first and the last checkpoint (inclusive) of ``chunk``."""
        start = self.first + chunk * self.chunk_size
        return start, start + self.chunk_size - 1

    def chunk_of(self, checkpoint: int) -> int:
        """The chunk that holds ``checkpoint`` (which must be >= ``first``)."""
        return (checkpoint - self.first) // self.chunk_size


class ClaimStore(Openable):
    """Leases on chunks, their fenced progress and their completion; see the module docstring.

    ``open`` is idempotent and methods open the store lazily; ``async with store:`` closes it.
    """

    clock: Clock

    @abstractmethod
    async def ensure_chunks(self, pipeline: str, count: int) -> None:
        """Create the rows of chunks 0..count-1 that are missing; existing rows are untouched."""

    @abstractmethod
    async def claim(self, pipeline: str, chunk: int, owner: str, ttl: float) -> Claim | None:
        """Lease ``chunk`` (or ``WHOLE``) to ``owner`` until now + ttl; None if another owner
        holds a live lease on it, the chunk is done, or the one-writer rule forbids it (see
        the module docstring). Claiming what one already holds live renews it (same token)."""

    @abstractmethod
    async def claim_next(
        self, pipeline: str, owner: str, ttl: float, chunks: range | None = None
    ) -> Claim | None:
        """Claim the lowest available chunk (within ``chunks``), or None if none is available."""

    @abstractmethod
    async def extend(self, claim: Claim, ttl: float) -> Claim:
        """Renew the lease to now + ttl (absolute, not added to the old expiry).

        Raises ClaimLost when another owner claimed the chunk since, ClaimNotFound when the chunk
        has no row or the claim was released."""

    @abstractmethod
    async def release(self, claim: Claim, done: bool = False) -> None:
        """Give the lease up; ``done=True`` marks the chunk complete, never to be claimed again.
        Raises as ``extend`` does."""

    @abstractmethod
    async def holders(self, pipeline: str) -> list[ChunkState]:
        """The live leases on the pipeline (``WHOLE`` included), in chunk order."""

    @abstractmethod
    async def expire(self, pipeline: str, state: ChunkState) -> bool:
        """End the lease ``state`` describes now, if its row still has that owner and token
        (False otherwise): for a holder known to be dead, so that its work can be taken over
        without waiting for the lease to run out."""

    @abstractmethod
    async def find_available(
        self, pipeline: str, limit: int, chunks: range | None = None
    ) -> list[int]:
        """Up to ``limit`` chunks, lowest first, that exist as rows (within ``chunks``, a step-1
        range), are not done and are not held by a live lease. A hint: ``claim`` decides."""

    @abstractmethod
    async def save_progress(self, claim: Claim, next_checkpoint: int) -> None:
        """Store the chunk's next checkpoint to process, only while ``claim`` is a live lease
        (else ClaimLost or ClaimNotFound, and nothing changes)."""

    @abstractmethod
    async def progress(self, pipeline: str, chunk: int) -> int | None:
        """The chunk's saved next checkpoint, or None when none was saved (or no such chunk)."""

    @abstractmethod
    def fenced(
        self, claim: Claim, next_checkpoint: int | None = None, *, recheck: bool = False
    ) -> AbstractAsyncContextManager[Any]:
        """Yield a connection inside a transaction that holds the lease checked and locked.

        Raises ClaimLost (or ClaimNotFound) on entry when the lease is not live, and checks it
        again before committing (a holder frozen inside the transaction past its lease commits
        nothing). On a clean exit ``next_checkpoint`` (when given) is saved as the chunk's
        progress and everything commits at once; when the block raises, everything rolls
        back. With ``recheck`` (a retry after a failure whose outcome is unknown) it raises
        ``AlreadyCommitted`` on entry when the chunk's saved progress already covers
        ``next_checkpoint``. This makes a sink in the same database exactly-once: a stale
        owner can never commit. Do not call the store inside it.
        """

    @abstractmethod
    async def adopt_layout(self, pipeline: str, layout: ChunkLayout) -> ChunkLayout:
        """Record ``layout`` as the pipeline's when it has none yet; return the recorded one
        (which differs from ``layout`` when another run recorded other numbers first)."""

    @abstractmethod
    async def layout(self, pipeline: str) -> ChunkLayout | None:
        """The pipeline's recorded layout, or None when it was never chunked here."""

    @abstractmethod
    async def forget(self, pipeline: str) -> None:
        """Delete the pipeline's layout and every chunk row (leases, progress, completion).
        For a reset, while no process runs the pipeline."""

    @abstractmethod
    async def pipelines(self) -> list[str]:
        """Every pipeline with a recorded layout, sorted."""

    @abstractmethod
    async def chunks(self, pipeline: str) -> list[ChunkState]:
        """Every chunk row of the pipeline in chunk order (``WHOLE`` left out)."""

    @abstractmethod
    async def completed_prefix(self, pipeline: str) -> int:
        """How many chunks from chunk 0 on are done without a gap (the pipeline's frontier)."""


# --- helpers the stores share -----------------------------------------------------------------


def check_ttl(ttl: float) -> float:
    """``ttl`` as a float, refusing negative and non-finite values (ValueError)."""
    ttl = float(ttl)
    if not math.isfinite(ttl) or ttl < 0:
        raise ValueError(f"lease ttl must be a finite number of seconds >= 0, not {ttl!r}")
    return ttl


def check_chunk(chunk: int) -> int:
    """``chunk`` if it is a chunk number (an int >= 0) or ``WHOLE``, else ValueError."""
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < WHOLE:
        raise ValueError(f"chunk must be an int >= 0 or WHOLE, not {chunk!r}")
    return chunk


def describe(state: ChunkState, now: float) -> str:
    """Who holds a lease and for how long, for errors: ``host:pid since 12:01:03 (lease
    renewed 2 s ago)``."""
    text = f"{state.owner}"
    if state.claimed_at is not None:
        text += f" since {time.strftime('%H:%M:%S', time.localtime(state.claimed_at))}"
    if state.renewed_at is not None:
        text += f" (lease renewed {max(0.0, now - state.renewed_at):.0f} s ago)"
    return text


def chunk_bounds(chunks: range | None) -> tuple[int, int]:
    """``chunks`` as [low, high) bounds for SQL; the whole non-negative range when None."""
    if chunks is None:
        return 0, 2**63 - 1
    if chunks.step != 1:
        raise ValueError(f"chunks must be a range with step 1, not {chunks!r}")
    return max(chunks.start, 0), max(chunks.stop, 0)


def new_token(
    row: tuple[str | None, int, float | None, bool] | None, owner: str, now: float
) -> int | None:
    """The token ``owner`` gets by claiming a chunk whose row is ``(owner, token, expires_at,
    done)`` (None: no row), or None when the claim must fail (done, or held live by another)."""
    if row is None:
        return 1
    holder, token, expires_at, done = row
    if done:
        return None
    live = holder is not None and expires_at is not None and now < expires_at
    if not live:
        return token + 1
    return token if holder == owner else None


def check_alive(claim: Claim, expires_at: float, now: float) -> None:
    """ClaimLost when the lease that expires at ``expires_at`` has run out at ``now`` (a holder
    that stalled inside its fenced transaction must not commit after that)."""
    if now >= expires_at:
        raise ClaimLost(
            f"{_where(claim)}: lease of {claim.owner!r} (token {claim.token}) ran out during "
            "its commit"
        )


def _where(claim: Claim) -> str:
    """What a lease is on, for errors."""
    what = "(its writer's lease)" if claim.chunk == WHOLE else f"chunk {claim.chunk}"
    return f"pipeline {claim.pipeline!r} {what}"


def check_holder(
    claim: Claim,
    row: tuple[str | None, int, float | None, bool] | None,
    now: float,
    *,
    live: bool,
) -> None:
    """Raise unless ``row`` (owner, token, expires_at, done) is still ``claim``'s lease; with
    ``live`` the lease must also not have expired."""
    where = _where(claim)
    if row is None:
        raise ClaimNotFound(f"{where}: no such chunk has been claimed")
    holder, token, expires_at, _done = row
    if token != claim.token or (holder is not None and holder != claim.owner):
        raise ClaimLost(
            f"{where}: lease of {claim.owner!r} (token {claim.token}) lost; "
            f"now token {token} held by {holder!r}"
        )
    if holder is None:
        raise ClaimNotFound(f"{where}: claim of {claim.owner!r} (token {token}) was released")
    if live and (expires_at is None or now >= expires_at):
        raise ClaimLost(
            f"{where}: lease of {claim.owner!r} (token {token}) expired at {expires_at}"
        )

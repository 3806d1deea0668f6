"""Leases in use: who a process is (``host:pid``), keeping a lease alive on a heartbeat, and
taking the whole of a pipeline for a run without chunks (one writer per pipeline).

A holder whose owner is a process of this host that no longer exists is dead for sure: its
lease is ended at once instead of waiting for it to run out (a restart right after a crash).
A holder on another host cannot be told from a slow one: its lease has to run out.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable

from .._log import log
from ..errors import ConfigurationError, FencingError, PipelineHeld, StoreBusy
from ..retry import RetryPolicy, logged_retry, retry
from ._base import WHOLE, ChunkState, Claim, ClaimStore, describe

__all__ = [
    "MAX_RENEWAL_FAILURES",
    "check_chunking",
    "check_no_whole_writer",
    "default_owner",
    "end_dead_holders",
    "heartbeat_of",
    "hold_whole",
    "keep_alive",
    "owner_is_dead",
]

#: Renewals that may fail in a row before a lease counts as lost.
MAX_RENEWAL_FAILURES = 3


def default_owner() -> str:
    """``host:pid``: unique among live processes, and says where a lease holder runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_is_dead(owner: str | None) -> bool:
    """Whether ``owner`` (``host:pid``) is a process of this host that no longer exists. A
    pid used again by another process makes a dead owner look alive: its lease runs out."""
    host, _, pid = (owner or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, as another user's process
        return False
    return False


def check_chunking(chunk_size: int, lease_ttl: float) -> None:
    """Refuse chunks of fewer than one checkpoint and leases that are not positive (here, not
    in ``indexer.chunked``: the config checks them without importing the chunked runner)."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigurationError(f"must be at least 1, got {chunk_size!r}", key="chunk_size")
    if not lease_ttl > 0:
        raise ConfigurationError(f"must be positive, got {lease_ttl!r}", key="lease_ttl")


def heartbeat_of(ttl: float) -> float:
    """How often a lease of ``ttl`` seconds is renewed."""
    return min(ttl / 4, 15.0)


async def end_dead_holders(claims: ClaimStore, pipeline: str, holders: list[ChunkState]) -> bool:
    """End the leases of ``holders`` whose owner is dead for sure; whether any was ended."""
    ended = False
    for state in holders:
        if owner_is_dead(state.owner) and await claims.expire(pipeline, state):
            log.info(
                "took over the lease of a dead process",
                pipeline=pipeline,
                chunk=state.chunk,
                owner=state.owner,
            )
            ended = True
    return ended


async def hold_whole(claims: ClaimStore, pipeline: str, owner: str, ttl: float) -> Claim:
    """Lease the whole of ``pipeline`` to ``owner`` for a run without chunks; PipelineHeld
    (naming the holder) when another writer holds it or any of its chunks."""
    for _ in range(3):  # the holders can change between the claim and the look at them
        claim = await claims.claim(pipeline, WHOLE, owner, ttl)
        if claim is not None:
            return claim
        holders = await claims.holders(pipeline)
        if await end_dead_holders(claims, pipeline, holders) or not holders:
            continue
        raise PipelineHeld(_held(pipeline, holders, claims.clock()))
    raise PipelineHeld(f"pipeline {pipeline!r} is held by another writer; stop it first")


async def check_no_whole_writer(claims: ClaimStore, pipeline: str) -> None:
    """For a chunked job: PipelineHeld when a run without chunks holds ``pipeline`` (after
    ending the leases of holders dead for sure, chunks' included)."""
    holders = await claims.holders(pipeline)
    if await end_dead_holders(claims, pipeline, holders):
        holders = await claims.holders(pipeline)
    if any(state.chunk == WHOLE for state in holders):
        raise PipelineHeld(_held(pipeline, holders, claims.clock()))


def _held(pipeline: str, holders: list[ChunkState], now: float) -> str:
    """The one-line refusal, naming the holder."""
    whole = [state for state in holders if state.chunk == WHOLE]
    if whole:
        return (
            f"pipeline {pipeline!r} is held by {describe(whole[0], now)}; stop it, or share "
            "the work with --processes/--claims"
        )
    first = holders[0]
    return (
        f"pipeline {pipeline!r} is being run in chunks (chunk {first.chunk} held by "
        f"{describe(first, now)}); join that job with --processes/--claims, or stop it"
    )


async def keep_alive(
    claims: ClaimStore,
    claim: Claim,
    ttl: float,
    on_lost: Callable[[str], None],
    on_failure: Callable[[], None] | None = None,
) -> None:
    """Renew ``claim`` every ``heartbeat_of(ttl)`` seconds until cancelled; when it is lost
    (taken, released) or ``MAX_RENEWAL_FAILURES`` renewals fail in a row, call
    ``on_lost(reason)`` once and return. A renewal the database could not take because
    another process held it locked (``StoreBusy``) is tried again without counting: while the
    lock is held no one can take the lease either, and a lease that ran out meanwhile is
    renewed if nobody took it since. ``on_failure()`` is called for each renewal that
    failed (for ``indexer_lease_renewal_failures_total``)."""
    heartbeat = heartbeat_of(ttl)
    policy = RetryPolicy(
        initial=heartbeat,
        multiplier=1,
        max_delay=heartbeat,
        jitter=0,
        max_attempts=MAX_RENEWAL_FAILURES,
    )
    logged = logged_retry(
        "lease renewal failed, retrying", pipeline=claim.pipeline, chunk=claim.chunk
    )

    def failed(attempt: int, exc: Exception, delay: float) -> None:
        if on_failure is not None:
            on_failure()
        logged(attempt, exc, delay)

    async def extend() -> Claim:
        while True:
            try:
                return await claims.extend(claim, ttl)
            except StoreBusy as exc:
                log.warning(
                    "lease renewal waits for the database",
                    pipeline=claim.pipeline,
                    chunk=claim.chunk,
                    error=str(exc),
                )

    while True:
        await asyncio.sleep(heartbeat)
        try:
            claim = await retry(
                extend,
                policy,
                retry_on=lambda exc: not isinstance(exc, FencingError),
                on_retry=failed,
            )
            continue
        except FencingError as exc:
            reason = str(exc)
        except Exception as exc:
            if on_failure is not None:
                on_failure()
            reason = f"{MAX_RENEWAL_FAILURES} renewals failed in a row, the last: {exc!r}"
        log.warning("lease lost", pipeline=claim.pipeline, chunk=claim.chunk, reason=reason)
        on_lost(reason)
        return

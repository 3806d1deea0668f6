"""What ``indexer status`` does: read a job's saved state.

A status report holds, per pipeline, the watermark, the feed's newest checkpoint, the lag (in
checkpoints, and in seconds: now minus the newest committed checkpoint's ``timestamp_ms``), the
dead letters, the pruned-below mark of a pipeline with a retention (its sink holds no rows of
checkpoints below it), and the checkpoint holding the watermark back, if one keeps failing (the
stall a run records: attempts, last error, where it was raised, time since the last commit); for a
pipeline cut into chunks (scale-out) also its chunk layout and every chunk not yet done, with
its owner, lease expiry and saved progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgspec

from ..checkpoint import CheckpointDecoder
from ..claims import ChunkLayout, ChunkState, ClaimStore
from ..errors import IndexerError
from ..progress import Stall
from ..sources import CheckpointSource, LocalDirectorySource, RemoteFeedSource
from .build import build_source
from .config import Config
from .stores import build_claim_store, build_store

__all__ = ["render_status", "status_report"]

#: Chunks listed per pipeline in the table (the JSON report lists all of them).
SHOWN_CHUNKS = 20
#: How long status waits to read the checkpoint below a watermark (for ``lag_seconds``).
STAMP_READ_TIMEOUT = 5.0


class _Stamp(msgspec.Struct):
    """The fields of any checkpoint type that ``lag_seconds`` needs; the others are skipped."""

    sequence_number: int
    timestamp_ms: int | None = None


def _claims(config: Config) -> ClaimStore | None:
    """The claim store in the progress store's database, when that kind of store has one."""
    if config.progress.spec.holds_claims:
        return build_claim_store(config)
    return None


async def status_report(config: Config, now: float | None = None) -> dict[str, Any]:
    """The report ``indexer status --json`` prints; read-only for a store that does not exist."""
    store = build_store(config)
    exists = config.progress.spec.exists()
    claims = _claims(config) if exists else None
    source = build_source(config)
    if isinstance(source, LocalDirectorySource | RemoteFeedSource):
        source.follow = False  # a look: a missing file is "unknown", not a wait for it
    now = time.time() if now is None else now
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(source.close)
        if exists:  # a read-only look must not create a store (a typo would look fresh)
            await stack.enter_async_context(store)
        if claims is not None:
            await stack.enter_async_context(claims)
        saved = await store.watermarks() if exists else {}
        chunked = await claims.pipelines() if claims is not None else []
        names = list(dict.fromkeys([*config.pipelines, *saved, *chunked]))
        latest = await source.latest_sequence_number()
        rows = []
        for name in names:
            watermark = saved.get(name)
            dead = await store.dead_letters(name) if exists else []
            stalls = await store.stalls(name) if exists else []
            row: dict[str, Any] = {
                "pipeline": name,
                "watermark": watermark,
                "feed_latest": latest,
                "lag": None if latest is None else max(0, latest + 1 - (watermark or 0)),
                "lag_seconds": await _lag_seconds(source, watermark, latest, now),
                "dead_letters": [d.sequence_number for d in dead],
                "pruned_below": await store.pruned_below(name) if exists else None,
                "stuck": _stuck(stalls, watermark or 0, now),
            }
            if claims is not None and name in chunked:
                layout = await claims.layout(name)
                assert layout is not None
                chunks = await claims.chunks(name)
                row["chunks"] = _chunk_report(layout, chunks, now)
            rows.append(row)
    return {"store": str(config.progress.spec), "store_exists": exists, "pipelines": rows}


async def _lag_seconds(
    source: CheckpointSource, watermark: int | None, latest: int | None, now: float
) -> float | None:
    """Now minus the ``timestamp_ms`` of the newest committed checkpoint (``watermark - 1``),
    read from the feed; None when unknown: no watermark, the checkpoint not (or no longer) in
    the feed, unreadable, or of a type without ``timestamp_ms``."""
    if watermark is None or watermark < 1 or latest is None or watermark - 1 > latest:
        return None
    stamp = await _timestamp_ms(source, watermark - 1)
    return None if stamp is None else round(max(0.0, now - stamp / 1000), 3)


async def _timestamp_ms(source: CheckpointSource, n: int) -> int | None:
    """The ``timestamp_ms`` of checkpoint ``n`` read through ``source``, or None."""
    if isinstance(source, LocalDirectorySource) and not (source.path / f"{n}.chk").exists():
        return None  # deleted below the watermark, or a gap: no read, no warning
    batches = source.stream_to(n, n, CheckpointDecoder(_Stamp))
    try:
        async with asyncio.timeout(STAMP_READ_TIMEOUT):
            async for batch in batches:
                for checkpoint, _ in batch:
                    if checkpoint.sequence_number == n:
                        return checkpoint.timestamp_ms
    except (IndexerError, OSError, TimeoutError):
        return None
    finally:
        close = getattr(batches, "aclose", None)  # an async generator: end it now
        if close is not None:
            await close()
    return None


def _stuck(stalls: list[Stall], watermark: int, now: float) -> dict[str, Any] | None:
    """The lowest recorded stall the watermark has not passed (one it passed is over, even
    if the run that recorded it never cleared it); None when there is none."""
    stall = next((s for s in stalls if s.checkpoint >= watermark), None)
    if stall is None:
        return None
    return {
        "checkpoint": stall.checkpoint,
        "attempts": stall.attempts,
        "error": stall.error,
        "location": stall.location,
        "seconds_failing": round(max(0.0, now - stall.failing_since), 1),
        "seconds_since_commit": round(max(0.0, now - stall.committed_at), 1),
        "seconds_since_report": round(max(0.0, now - stall.reported_at), 1),
    }


def _chunk_report(layout: ChunkLayout, chunks: list[ChunkState], now: float) -> dict[str, Any]:
    pending = []
    for state in chunks:
        if state.done:
            continue
        first, last = layout.bounds(state.chunk)
        held = state.held(now)
        pending.append(
            {
                "chunk": state.chunk,
                "checkpoints": [first, last],
                "owner": state.owner if held else None,
                "lease_expires_in": round(state.expires_at - now, 3)
                if held and state.expires_at is not None
                else None,
                "progress": state.progress,
            }
        )
    return {
        "first": layout.first,
        "chunk_size": layout.chunk_size,
        "total": len(chunks),
        "done": sum(state.done for state in chunks),
        "held": sum(state.held(now) for state in chunks),
        "pending": pending,
    }


def render_status(report: dict[str, Any]) -> None:
    """The report as tables on the terminal: the pipelines, then each one's pending chunks."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    missing = "" if report["store_exists"] else " (does not exist yet)"
    table = Table(title=f"progress store {report['store']}{missing}")
    chunked = [row for row in report["pipelines"] if "chunks" in row]
    pruned = any(row.get("pruned_below") is not None for row in report["pipelines"])
    columns = ["pipeline", "watermark", "feed latest", "lag", "lag seconds", "dead letters"]
    columns += ["pruned below"] if pruned else []
    columns += ["chunks done", "held"] if chunked else []
    for column in columns:
        table.add_column(column, justify="left" if column == "pipeline" else "right")
    for row in report["pipelines"]:
        dead = row["dead_letters"]
        cells = [
            row["pipeline"],
            _cell(row["watermark"]),
            _cell(row["feed_latest"]),
            _cell(row["lag"]),
            "-" if row["lag_seconds"] is None else f"{row['lag_seconds']:.1f}",
            str(len(dead)) + (f" ({', '.join(map(str, dead[:5]))}…)" if dead else ""),
        ]
        if pruned:
            cells.append(_cell(row.get("pruned_below")))
        if chunked:
            chunks = row.get("chunks")
            cells += (
                [f"{chunks['done']}/{chunks['total']}", str(chunks["held"])]
                if chunks
                else ["-", "-"]
            )
        table.add_row(*cells)
    console.print(table)
    _render_stuck(console, report["pipelines"])
    for row in chunked:
        chunks = row["chunks"]
        pending = chunks["pending"]
        if not pending:
            continue
        detail = Table(
            title=f"{row['pipeline']}: chunks of {chunks['chunk_size']} from {chunks['first']}, "
            f"{len(pending)} not done"
        )
        for column in ("chunk", "checkpoints", "owner", "lease expires in", "progress"):
            detail.add_column(column, justify="left" if column == "owner" else "right")
        for chunk in pending[:SHOWN_CHUNKS]:
            first, last = chunk["checkpoints"]
            expires = chunk["lease_expires_in"]
            detail.add_row(
                str(chunk["chunk"]),
                f"{first}..{last}",
                chunk["owner"] or "-",
                "-" if expires is None else f"{expires:.1f}s",
                _cell(chunk["progress"]),
            )
        if len(pending) > SHOWN_CHUNKS:
            detail.caption = f"… and {len(pending) - SHOWN_CHUNKS} more (--json lists all)"
        console.print(detail)


def _render_stuck(console: Any, rows: list[dict[str, Any]]) -> None:
    """Each checkpoint holding a watermark back, in three lines: the counts, the last error,
    where it was raised (errors are too long for a table's cell)."""
    from rich.markup import escape

    for row in rows:
        stall = row.get("stuck")
        if not stall:
            continue
        console.print(
            f"[bold]{escape(row['pipeline'])}[/bold]: stuck at checkpoint {stall['checkpoint']}"
            f" ({stall['attempts']} attempts, failing for {stall['seconds_failing']:.0f} s,"
            f" last commit {stall['seconds_since_commit']:.0f} s ago,"
            f" reported {stall['seconds_since_report']:.0f} s ago)",
            highlight=False,
        )
        console.print(f"  {escape(stall['error'])}", highlight=False, soft_wrap=True)
        console.print(f"  at {escape(stall['location'])}", highlight=False, soft_wrap=True)


def _cell(value: int | None) -> str:
    return "-" if value is None else str(value)

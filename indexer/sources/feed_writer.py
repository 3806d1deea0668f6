"""Writing checkpoints as a directory feed of ``{sequence_number}.chk`` files."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from contextlib import aclosing, suppress
from pathlib import Path
from typing import Any

from ..checkpoint import CheckpointDecoder, encode_checkpoint
from ._base import CheckpointSource

_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


def _write_file(directory: str, sequence_number: int, data: bytes) -> str:
    """Write ``data`` to ``.{n}.chk.tmp`` and rename it to ``{n}.chk``: readers never see half."""
    final = os.path.join(directory, f"{sequence_number}.chk")
    tmp = os.path.join(directory, f".{sequence_number}.chk.tmp")
    fd = os.open(tmp, _WRITE_FLAGS, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    os.replace(tmp, final)
    return final


def write_checkpoint_file(directory: str | os.PathLike[str], checkpoint: Any) -> Path:
    """Write one checkpoint atomically as ``directory/{n}.chk`` (creating the directory)."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    data = encode_checkpoint(checkpoint)
    return Path(_write_file(str(path), checkpoint.sequence_number, data))


def _write_batch(directory: str, checkpoints: Sequence[Any]) -> None:
    for checkpoint in checkpoints:
        _write_file(directory, checkpoint.sequence_number, encode_checkpoint(checkpoint))


async def write_feed(
    source: CheckpointSource,
    directory: str | os.PathLike[str],
    *,
    start: int = 0,
    count: int,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Write ``count`` checkpoints of ``source`` from ``start`` as ``directory/{n}.chk`` files.

    Returns how many were written (fewer when the source ends first). Files are written off the
    event loop, one batch at a time, while the source produces the next batch.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    if count == 0:
        return 0
    loop = asyncio.get_running_loop()
    target = str(path)
    written = scheduled = 0
    pending: asyncio.Future[None] | None = None

    async def finish_pending() -> None:
        nonlocal pending, written
        if pending is not None:
            future, pending = pending, None
            await future
            written = scheduled
            if on_progress is not None:
                on_progress(written)

    try:
        stream = source.stream(start, CheckpointDecoder())
        async with aclosing(stream) as batches:  # type: ignore[type-var]
            async for batch in batches:
                chunk = [checkpoint for checkpoint, _ in batch[: count - scheduled]]
                await finish_pending()
                pending = loop.run_in_executor(None, _write_batch, target, chunk)
                scheduled += len(chunk)
                if scheduled >= count:
                    break
        await finish_pending()
    finally:
        if pending is not None:
            # Let an interrupted write finish so no temporary file is left half-written; the
            # error already propagating matters more than one from this write.
            with suppress(Exception):
                await asyncio.shield(pending)
    return written

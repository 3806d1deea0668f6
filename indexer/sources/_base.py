"""The source contract: checkpoints in sequence order, delivered in batches."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Any

from ..checkpoint import CheckpointDecoder

#: What a source yields: decoded checkpoints with their encoded size in bytes.
SourcedBatch = list[tuple[Any, int]]


class CheckpointSource(ABC):
    """A feed of numbered checkpoints.

    ``stream(start, decoder)`` yields lists of ``(checkpoint, size_in_bytes)`` in strictly
    increasing, gap-free sequence order starting at ``start``. A finite source ends the iteration
    after its last checkpoint; a live one waits for more. Sources that hold bytes decode them with
    ``decoder`` (which names the file and checkpoint in its errors); sources that make objects
    return them converted with ``decoder.convert``.
    """

    @abstractmethod
    def stream(self, start: int, decoder: CheckpointDecoder[Any]) -> AsyncIterator[SourcedBatch]:
        """Yield batches of checkpoints from ``start`` on, in order."""

    def stream_to(
        self, start: int, last: int, decoder: CheckpointDecoder[Any]
    ) -> AsyncIterator[SourcedBatch]:
        """``stream`` for a run that ends after checkpoint ``last``: a source that reads ahead
        overrides it so as not to read and decode past ``last``. By default, ``stream``."""
        return self.stream(start, decoder)

    async def latest_sequence_number(self) -> int | None:
        """The newest checkpoint the feed holds, or None when unknown (for lag and status)."""
        return None

    async def unreadable(self) -> str | None:
        """Why the feed cannot be read now (a missing directory, requests failing), for
        ``/readyz``; None when it can be, or when the source cannot tell."""
        return None

    async def prune(self, below: int) -> None:  # noqa: B027 - optional hook
        """Called when every pipeline's watermark is at least ``below``; may free data below it."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release files, connections and threads."""

"""EventExtractor: one row per event whose type matches a glob pattern."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from typing import NamedTuple

import msgspec

from indexer import Checkpoint, ConfigurationError, Worker

_json = msgspec.json.Encoder()


class EventRow(NamedTuple):
    """What EventExtractor emits for each matching event.

    ``event_index`` is the event's position within its transaction, so
    ``(transaction_digest, event_index)`` identifies an event.
    """

    checkpoint: int
    transaction_digest: str
    event_index: int
    type: str
    payload_json: str


class EventExtractor(Worker[Checkpoint, list[EventRow]]):
    """Turns each checkpoint into one ``EventRow`` per event whose type matches any of
    ``patterns`` (case-sensitive ``fnmatch`` globs such as ``"dex::*"``; default: every event).

    The patterns are compiled once into a single regular expression.
    """

    name = "events"

    #: Column names and SQL types of the rows, for sinks that create their table.
    columns = {
        "checkpoint": "BIGINT NOT NULL",
        "transaction_digest": "TEXT NOT NULL",
        "event_index": "INTEGER NOT NULL",
        "type": "TEXT NOT NULL",
        "payload_json": "TEXT NOT NULL",
    }

    def __init__(self, patterns: Sequence[str] = ("*",)) -> None:
        if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
            raise ConfigurationError(
                f"EventExtractor patterns must be a list of strings, got {patterns!r}"
            )
        self.patterns = list(patterns)
        self._match_all = "*" in self.patterns
        regex = "|".join(f"(?:{fnmatch.translate(p)})" for p in self.patterns) or "(?!)"
        self._match = re.compile(regex).match

    def matches(self, event_type: str) -> bool:
        """True when ``event_type`` matches one of the patterns."""
        return self._match_all or self._match(event_type) is not None

    async def process_checkpoint(self, checkpoint: Checkpoint) -> list[EventRow]:
        n, matches, encode = checkpoint.sequence_number, self.matches, _json.encode
        return [
            EventRow(n, tx.digest, i, event.type, encode(event.payload).decode())
            for tx in checkpoint.transactions
            for i, event in enumerate(tx.events)
            if matches(event.type)
        ]

"""TransactionExtractor: one row per transaction."""

from __future__ import annotations

from typing import NamedTuple

from indexer import Checkpoint, Worker


class TransactionRow(NamedTuple):
    """What TransactionExtractor emits for each transaction."""

    checkpoint: int
    digest: str
    sender: str
    event_count: int
    timestamp_ms: int


class TransactionExtractor(Worker[Checkpoint, list[TransactionRow]]):
    """Turns each checkpoint into one ``TransactionRow`` per transaction."""

    name = "transactions"

    #: Column names and SQL types of the rows, for sinks that create their table.
    columns = {
        "checkpoint": "BIGINT NOT NULL",
        "digest": "TEXT NOT NULL",
        "sender": "TEXT NOT NULL",
        "event_count": "INTEGER NOT NULL",
        "timestamp_ms": "BIGINT NOT NULL",
    }

    async def process_checkpoint(self, checkpoint: Checkpoint) -> list[TransactionRow]:
        n, ts = checkpoint.sequence_number, checkpoint.timestamp_ms
        return [
            TransactionRow(n, tx.digest, tx.sender, len(tx.events), ts)
            for tx in checkpoint.transactions
        ]

"""Workers that fail, for the tests of what a user meets when a worker does: a typo that fails
every checkpoint, and a service that is down. A config names them by import string
(``worker = "failing_workers:TypoWorker"``) with ``PYTHONPATH=tests/programs``.
"""

from __future__ import annotations

from indexer import Checkpoint, Worker


class TypoWorker(Worker[Checkpoint, int]):
    """Counts events, but from checkpoint ``typo_from`` on misspells ``events``: each of those
    with a transaction fails with the same AttributeError at the same line (the tests find the
    line by its text)."""

    def __init__(self, typo_from: int = 0) -> None:
        self.typo_from = typo_from

    async def process_checkpoint(self, checkpoint: Checkpoint) -> int:
        if checkpoint.sequence_number < self.typo_from:
            return sum(len(tx.events) for tx in checkpoint.transactions)
        return sum(len(tx.evnts) for tx in checkpoint.transactions)  # type: ignore[attr-defined]


class ServiceDownWorker(Worker[Checkpoint, int]):
    """Fails every checkpoint from ``down_from`` on with a ConnectionError, as a worker does
    whose database or RPC is down: a transient failure, which never halts a pipeline whose
    retries are unlimited."""

    def __init__(self, down_from: int = 0) -> None:
        self.down_from = down_from

    async def process_checkpoint(self, checkpoint: Checkpoint) -> int:
        if checkpoint.sequence_number >= self.down_from:
            raise ConnectionError("connection refused: the service is down")
        return len(checkpoint.transactions)

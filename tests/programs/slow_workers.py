"""Workers for the command's tests, referenced from a config by import string.

The tests run ``indexer run`` with ``PYTHONPATH=tests/programs`` and
``worker = "slow_workers:SlowTransactionExtractor"`` so that a run over a small feed lasts long
enough to be scraped, stopped by a signal or killed while it is still processing.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from indexer import Checkpoint
from workers import TransactionExtractor, TransactionRow

#: With ``HOLD_WHILE`` (a file's path): checkpoints from this number on wait while it exists.
HOLD_FROM = "SLOW_WORKER_HOLD_FROM"
HOLD_WHILE = "SLOW_WORKER_HOLD_WHILE"


class SlowTransactionExtractor(TransactionExtractor):
    """``TransactionExtractor`` that first sleeps ``delay`` seconds per checkpoint.

    In a process started with ``SLOW_WORKER_HOLD_FROM=N`` and ``SLOW_WORKER_HOLD_WHILE=PATH``
    in its environment, checkpoint N and later ones wait while PATH exists, after creating
    ``PATH.reached``: a test can stop one process of a job at a known place and no other."""

    def __init__(self, delay: float = 0.002) -> None:
        self.delay = delay
        hold = os.environ.get(HOLD_WHILE)
        self.hold = Path(hold) if hold else None
        self.hold_from = int(os.environ.get(HOLD_FROM, "0"))

    async def process_checkpoint(self, checkpoint: Checkpoint) -> list[TransactionRow]:
        await asyncio.sleep(self.delay)
        if self.hold is not None and checkpoint.sequence_number >= self.hold_from:
            self.hold.with_name(f"{self.hold.name}.reached").touch()
            while self.hold.exists():
                await asyncio.sleep(0.01)
        return await super().process_checkpoint(checkpoint)

"""Workers for the CLI tests, referenced from a config by import string.

``tests/test_cli.py`` runs ``indexer run`` with ``PYTHONPATH=tests/programs`` and
``worker = "slow_workers:SlowTransactionExtractor"`` so that a run over a small feed lasts long
enough to be scraped and stopped by a signal while it is still processing.
"""

from __future__ import annotations

import asyncio

from indexer import Checkpoint
from workers import TransactionExtractor, TransactionRow


class SlowTransactionExtractor(TransactionExtractor):
    """``TransactionExtractor`` that first sleeps ``delay`` seconds per checkpoint."""

    def __init__(self, delay: float = 0.002) -> None:
        self.delay = delay

    async def process_checkpoint(self, checkpoint: Checkpoint) -> list[TransactionRow]:
        await asyncio.sleep(self.delay)
        return await super().process_checkpoint(checkpoint)

"""Workers for the command's tests, referenced from a config by import string.

The tests run ``indexer run`` with ``PYTHONPATH=tests/programs`` and
``worker = "slow_workers:SlowTransactionExtractor"`` so that a run over a small feed lasts long
enough to be scraped, stopped by a signal or killed while it is still processing.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from indexer import Checkpoint
from indexer.errors import ConfigurationError
from reducers import PostgresSink, SqliteSink
from workers import TransactionExtractor, TransactionRow

#: A worker process of ``--processes`` whose index is this refuses to start (exit 2).
REFUSE_IN_PROCESS = "SLOW_WORKER_REFUSE_IN_PROCESS"
#: With ``HOLD_WHILE`` (a file's path): checkpoints from this number on wait while it exists.
HOLD_FROM = "SLOW_WORKER_HOLD_FROM"
HOLD_WHILE = "SLOW_WORKER_HOLD_WHILE"


class SlowTransactionExtractor(TransactionExtractor):
    """``TransactionExtractor`` that first sleeps ``delay`` seconds per checkpoint.

    In a process started with ``SLOW_WORKER_HOLD_FROM=N`` and ``SLOW_WORKER_HOLD_WHILE=PATH``
    in its environment, checkpoint N and later ones wait while PATH exists, after creating
    ``PATH.reached``: a test can stop one process of a job at a known place and no other.
    In the process of ``INDEXER_PROCESS_INDEX`` N, ``SLOW_WORKER_REFUSE_IN_PROCESS=N`` makes
    it refuse to start (a configuration error) as that process builds its pipeline."""

    def __init__(self, delay: float = 0.002) -> None:
        refuse = os.environ.get(REFUSE_IN_PROCESS)
        if refuse is not None and refuse == os.environ.get("INDEXER_PROCESS_INDEX"):
            raise ConfigurationError(f"refused to start in worker process {refuse}")
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


#: With ``PAUSE_MARK`` (a file's path): a sink's batch with a checkpoint from ``PAUSE_FROM``
#: on creates that file, then pauses ``PAUSE_SECONDS`` inside the commit's transaction.
PAUSE_FROM = "SLOW_SINK_PAUSE_FROM"
PAUSE_MARK = "SLOW_SINK_PAUSE_MARK"
PAUSE_SECONDS = "SLOW_SINK_PAUSE_SECONDS"


class _PausingWrite:
    """A sink's ``write`` that, in a process started with ``SLOW_SINK_PAUSE_MARK``, pauses once
    inside its transaction (holding the database's locks) when a batch reaches
    ``SLOW_SINK_PAUSE_FROM``: a test can freeze a process exactly there."""

    _paused = False

    async def write(self, connection: Any, batch: list[Any]) -> None:
        await super().write(connection, batch)  # type: ignore[misc]
        mark = os.environ.get(PAUSE_MARK)
        reached = any(
            row[0] >= int(os.environ.get(PAUSE_FROM, "0")) for rows in batch for row in rows
        )
        if mark and reached and not self._paused:
            self._paused = True
            Path(mark).touch()
            await asyncio.sleep(float(os.environ.get(PAUSE_SECONDS, "3")))


class PausingSqliteSink(_PausingWrite, SqliteSink):
    """SqliteSink that can pause inside a commit (see ``_PausingWrite``)."""


class PausingPostgresSink(_PausingWrite, PostgresSink):
    """PostgresSink that can pause inside a commit (see ``_PausingWrite``)."""

"""CheckpointArchiver: each checkpoint's msgpack bytes, for ``reducers.ArchiveSink``."""

from __future__ import annotations

import os
from typing import Any

from indexer import Checkpoint, Worker
from indexer.checkpoint import encode_checkpoint
from reducers.archive import ArchivedCheckpoint, ArchiveSink


class CheckpointArchiver(Worker[Checkpoint, ArchivedCheckpoint]):
    """Turns each checkpoint into ``ArchivedCheckpoint(sequence_number, msgpack bytes)``.

    Pair it with ``ArchiveSink`` on the same settings (``sink()`` builds one), which writes
    zstd-compressed bundles of ``checkpoints_per_bundle`` checkpoints into ``directory``. The
    bytes are the re-encoding of the decoded checkpoint (``encode_checkpoint``): fields the
    checkpoint type does not declare are not kept, so subclass with a wider ``checkpoint_type``
    to archive them too. Encoding runs in the workers, compression in the sink.
    """

    name = "archive"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        checkpoints_per_bundle: int = 1000,
        level: int = 3,
    ) -> None:
        self.directory = directory
        self.checkpoints_per_bundle = checkpoints_per_bundle
        self.level = level
        self.sink()  # validates the settings now rather than at the first commit

    def sink(self, **limits: Any) -> ArchiveSink:
        """A new ``ArchiveSink`` writing this archiver's directory with its settings."""
        return ArchiveSink(self.directory, self.checkpoints_per_bundle, self.level, **limits)

    async def process_checkpoint(self, checkpoint: Checkpoint) -> ArchivedCheckpoint:
        return ArchivedCheckpoint(checkpoint.sequence_number, encode_checkpoint(checkpoint))

"""Sinks for the retention tests, referenced from a config by import string
(``reducer.class = "pruning_sinks:FlakyPruneSqliteSink"``, with ``tests/programs`` on
``PYTHONPATH``)."""

from __future__ import annotations

from typing import Any

from reducers import SqliteSink


class FlakyPruneSqliteSink(SqliteSink):
    """A SqliteSink whose first ``prune_failures`` prunes in this process fail (a database
    that went away), before deleting anything."""

    def __init__(self, *args: Any, prune_failures: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prune_failures = prune_failures

    async def prune(self, below: int, store: Any) -> int:
        if self.prune_failures > 0:
            self.prune_failures -= 1
            raise OSError("disk I/O error (injected)")
        return await super().prune(below, store)

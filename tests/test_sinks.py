"""indexer.sinks: a sink author's DatabaseSink, exactly once on the store's database and at
least once on its own, with the same code."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from indexer import Checkpoint, ConfigurationError, Worker
from indexer.progress import MemoryProgressStore, SqliteProgressStore
from indexer.sinks import DatabaseSink, SqliteDatabaseSink
from indexer.testing import make_checkpoints, run_worker


class Numbers(Worker[Checkpoint, int]):
    async def process_checkpoint(self, checkpoint: Checkpoint) -> int:
        return checkpoint.sequence_number


class NumberSink(SqliteDatabaseSink[int]):
    """What a sink author writes: the statements of one batch, nothing about transactions."""

    def __init__(self, path: str | Path | None = None, fail_at: int | None = None) -> None:
        super().__init__(path, max_batch_size=10, max_batch_age=None)
        self.fail_at = fail_at

    async def write(self, connection: aiosqlite.Connection, batch: list[int]) -> None:
        await connection.execute("CREATE TABLE IF NOT EXISTS numbers (n INTEGER PRIMARY KEY)")
        await connection.executemany("INSERT INTO numbers VALUES (?)", [(n,) for n in batch])
        if self.fail_at is not None and self.fail_at in batch:
            self.fail_at = None
            raise RuntimeError("after the inserts")


def numbers(db: Path) -> list[int]:
    with sqlite3.connect(db) as conn:
        found = [row[0] for row in conn.execute("SELECT n FROM numbers ORDER BY n")]
    conn.close()
    return found


def test_the_base_is_what_the_ready_made_sinks_build_on() -> None:
    from reducers import CounterSink, PostgresSink, SqliteSink

    assert all(issubclass(sink, DatabaseSink) for sink in (SqliteSink, CounterSink, PostgresSink))


async def test_on_the_store_file_batches_commit_with_the_watermark(tmp_path: Path) -> None:
    db = tmp_path / "index.db"
    store = SqliteProgressStore(db)
    sink = NumberSink(fail_at=25)
    assert sink.uses_store_transaction(store)
    result = await run_worker(Numbers(), make_checkpoints(50), reducer=sink, store=store)
    assert result.watermark == 50
    assert numbers(db) == list(range(50))  # the failed batch's inserts were rolled back


async def test_on_its_own_file_a_failed_commit_rolls_back_and_the_retry_succeeds(
    tmp_path: Path,
) -> None:
    db = tmp_path / "own.db"
    sink = NumberSink(db, fail_at=25)
    assert not sink.uses_store_transaction(MemoryProgressStore())
    result = await run_worker(Numbers(), make_checkpoints(50), reducer=sink)
    assert result.watermark == 50
    assert numbers(db) == list(range(50))  # no duplicate key: the failed batch left nothing


async def test_without_a_path_the_store_must_be_sqlite() -> None:
    with pytest.raises(ConfigurationError) as caught:
        await run_worker(Numbers(), make_checkpoints(5), reducer=NumberSink())
    assert str(caught.value) == (
        "NumberSink: no path is set and the progress store (MemoryProgressStore) is not "
        "SQLite; set path or use a SQLite store"
    )


async def test_a_sink_author_who_forgets_write_is_told(tmp_path: Path) -> None:
    class Forgetful(SqliteDatabaseSink[Any]):
        pass

    sink = Forgetful(tmp_path / "own.db")
    with pytest.raises(NotImplementedError, match="Forgetful must implement write"):
        await sink.commit([1])
    await sink.close()

"""The ready-made sinks: CounterSink, ArchiveSink and JsonlSink, with exact expectations."""

from __future__ import annotations

import os
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import pytest
import zstandard

from indexer import Checkpoint, ConfigurationError, IndexerExecutor, RetryPolicy, WorkerPool
from indexer.checkpoint import encode_checkpoint
from indexer.progress import MemoryProgressStore, SqliteProgressStore
from indexer.sources import SyntheticSource
from indexer.testing import run_worker
from reducers import (
    ArchivedCheckpoint,
    ArchiveReader,
    ArchiveSink,
    CounterSink,
    JsonlSink,
    PostgresSink,
    SqliteSink,
    read_archive,
    rotated_files,
)
from reducers.archive import load_index
from workers import ActivityCounter, CheckpointArchiver, Counts, TransactionExtractor

FAST_RETRY = RetryPolicy(initial=0.01, max_delay=0.01, jitter=0)


@pytest.fixture(scope="module")
def checkpoints() -> list[Checkpoint]:
    source = SyntheticSource(seed=1)
    return [source.checkpoint_at(n) for n in range(2600)]


def direct_counts(checkpoints: list[Checkpoint]) -> dict[tuple[str, str], int]:
    counts: Counter[tuple[str, str]] = Counter()
    for c in checkpoints:
        for tx in c.transactions:
            counts["sender", tx.sender] += 1
            for event in tx.events:
                counts["event_type", event.type] += 1
    return dict(counts)


def table_counts(path: Path, table: str = "activity_counts") -> dict[tuple[str, str], int]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(f"SELECT dimension, key, count FROM {table}").fetchall()
    return {(d, k): n for d, k, n in rows}


# -- CounterSink ----------------------------------------------------------------------------


class FlakyCounterSink(CounterSink):
    """Fails its first ``failures`` transactional commits after writing (they roll back)."""

    def __init__(self, failures: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.failures = failures

    async def commit_in_transaction(self, connection: Any, batch: list[Any]) -> None:
        await super().commit_in_transaction(connection, batch)
        if self.failures:
            self.failures -= 1
            raise RuntimeError("crash after the write")


async def run_counter(db: Path, sink: CounterSink, count: int = 300) -> int:
    executor = IndexerExecutor(SqliteProgressStore(db), handle_signals=False, tune_gc=False)
    executor.register(WorkerPool(ActivityCounter(), concurrency=8, reducer=sink))
    watermarks = await executor.run(SyntheticSource(seed=1, count=count))
    return watermarks["activity"]


async def test_counter_sink_in_the_store_transaction(
    checkpoints: list[Checkpoint], tmp_path: Path
) -> None:
    db = tmp_path / "index.db"
    sink = FlakyCounterSink(2, max_batch_size=64, commit_retry=FAST_RETRY)
    assert sink.uses_store_transaction(SqliteProgressStore(db))
    assert await run_counter(db, sink) == 300
    assert sink.failures == 0  # two commits rolled back and were retried
    expected = direct_counts(checkpoints[:300])
    assert table_counts(db) == expected
    # Resuming does nothing again: the watermark and the totals moved together.
    assert await run_counter(db, CounterSink(max_batch_size=64)) == 300
    assert table_counts(db) == expected
    # Going on adds only the new checkpoints.
    assert await run_counter(db, CounterSink(max_batch_size=64), count=400) == 400
    assert table_counts(db) == direct_counts(checkpoints[:400])


async def test_counter_sink_with_its_own_database(
    checkpoints: list[Checkpoint], tmp_path: Path
) -> None:
    db = tmp_path / "counts.db"
    sink = CounterSink(table="totals", path=str(db), max_batch_size=50)
    assert not sink.uses_store_transaction(MemoryProgressStore())
    assert not sink.uses_store_transaction(SqliteProgressStore(tmp_path / "other.db"))
    result = await run_worker(ActivityCounter(), checkpoints[:300], reducer=sink, concurrency=4)
    await sink.close()
    assert result.watermark == 300
    assert table_counts(db, "totals") == direct_counts(checkpoints[:300])


async def test_counter_sink_merges_a_batch(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    sink = CounterSink(path=str(db))
    a = Counts({("sender", "0x1"): 2, ("event_type", "dex::Swap"): 1})
    await sink.commit([a, Counts({("sender", "0x1"): 3}), Counts()])
    await sink.commit([Counts({("sender", "0x2"): 1, ("sender", "0x1"): 1})])
    await sink.close()
    assert table_counts(db) == {
        ("sender", "0x1"): 6,
        ("sender", "0x2"): 1,
        ("event_type", "dex::Swap"): 1,
    }
    with pytest.raises(ConfigurationError):
        CounterSink(table="no such")


# -- SqliteSink -----------------------------------------------------------------------------


class FlakySqliteSink(SqliteSink):
    """Fails its first ``failures`` transactional commits after writing (they roll back)."""

    def __init__(self, failures: int, **kwargs: Any) -> None:
        super().__init__("transactions", TransactionExtractor.columns, **kwargs)
        self.failures = failures

    async def commit_in_transaction(self, connection: Any, batch: list[Any]) -> None:
        await super().commit_in_transaction(connection, batch)
        if self.failures:
            self.failures -= 1
            raise RuntimeError("crash after the write")


def transaction_rows(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT checkpoint, digest FROM transactions ORDER BY rowid").fetchall()


def expected_rows(checkpoints: list[Checkpoint], count: int) -> list[tuple[int, str]]:
    return [(c.sequence_number, tx.digest) for c in checkpoints[:count] for tx in c.transactions]


async def test_sqlite_sink_survives_a_rolled_back_first_batch(
    checkpoints: list[Checkpoint], tmp_path: Path
) -> None:
    # The first batch creates the table; its rollback drops it again, so the retry must
    # create it anew rather than trust that it exists.
    db = tmp_path / "index.db"
    sink = FlakySqliteSink(2, max_batch_size=40, commit_retry=FAST_RETRY)
    store = SqliteProgressStore(db)
    assert sink.uses_store_transaction(store)
    result = await run_worker(
        TransactionExtractor(), checkpoints[:200], reducer=sink, store=store, concurrency=4
    )
    assert result.watermark == 200 and sink.failures == 0
    assert transaction_rows(db) == expected_rows(checkpoints, 200)


async def test_sqlite_sink_with_its_own_file_and_upsert_key(
    checkpoints: list[Checkpoint], tmp_path: Path
) -> None:
    db = tmp_path / "rows.db"
    sink = SqliteSink("transactions", TransactionExtractor.columns, path=str(db), key=["digest"])
    assert not sink.uses_store_transaction(SqliteProgressStore(tmp_path / "progress.db"))
    assert not sink.uses_store_transaction(MemoryProgressStore())
    rows = [list(m) for m in (await run_worker(TransactionExtractor(), checkpoints[:50])).messages]
    await sink.commit(rows[:30])
    await sink.commit(rows[20:])  # a replay of 20..29 (at-least-once) is absorbed by the key
    names = list(TransactionExtractor.columns)
    as_mappings = [[dict(zip(names, r, strict=True)) for r in message] for message in rows[40:]]
    await sink.commit(as_mappings)  # rows may also be mappings by column name
    await sink.close()
    assert transaction_rows(db) == expected_rows(checkpoints, 50)


def test_sqlite_sink_rejects_bad_declarations() -> None:
    columns = TransactionExtractor.columns
    with pytest.raises(ConfigurationError, match="not an identifier"):
        SqliteSink("drop table", columns)
    with pytest.raises(ConfigurationError, match="columns must not be empty"):
        SqliteSink("t", {})
    with pytest.raises(ConfigurationError, match="key columns"):
        SqliteSink("t", columns, key=["nope"])


# -- ArchiveSink ----------------------------------------------------------------------------


def messages(checkpoints: list[Checkpoint], start: int, stop: int) -> list[ArchivedCheckpoint]:
    return [ArchivedCheckpoint(n, encode_checkpoint(checkpoints[n])) for n in range(start, stop)]


def assert_archive_holds(directory: Path, checkpoints: list[Checkpoint], count: int) -> None:
    """The archive holds exactly checkpoints 0..count-1, once each, and nothing else."""
    reader = ArchiveReader(directory)
    assert [r.sequence_number for r in reader.records()] == list(range(count))
    assert list(read_archive(directory)) == [encode_checkpoint(c) for c in checkpoints[:count]]
    for bundle in reader.index.bundles:
        assert (directory / bundle.file).stat().st_size == bundle.end  # no stray bytes
        starts = [f.offset for f in bundle.frames]
        assert starts == [0] + [f.offset + f.length for f in bundle.frames[:-1]]


async def test_archive_bundles_index_and_random_access(
    checkpoints: list[Checkpoint], tmp_path: Path
) -> None:
    archiver = CheckpointArchiver(str(tmp_path), checkpoints_per_bundle=1000)
    sink = archiver.sink(max_batch_size=300)
    result = await run_worker(archiver, checkpoints[:2500], reducer=sink, concurrency=8)
    assert result.watermark == 2500
    assert sorted(p.name for p in tmp_path.glob("bundle-*")) == [
        "bundle-000000000000.zst",
        "bundle-000000001000.zst",
        "bundle-000000002000.zst",
    ]
    index = load_index(tmp_path)
    assert index is not None and index.checkpoints_per_bundle == 1000
    assert [(b.file, b.first, b.last) for b in index.bundles] == [
        ("bundle-000000000000.zst", 0, 999),
        ("bundle-000000001000.zst", 1000, 1999),
        ("bundle-000000002000.zst", 2000, 2499),
    ]
    frames = [f for b in index.bundles for f in b.frames]
    assert [f.first for f in frames[1:]] == [f.last + 1 for f in frames[:-1]]
    assert all(f.first // 1000 == f.last // 1000 and f.last - f.first < 300 for f in frames)
    assert len(frames) >= 9
    assert_archive_holds(tmp_path, checkpoints, 2500)

    reader = ArchiveReader(tmp_path)
    assert (reader.first, reader.last) == (0, 2499)
    assert reader.get(1234) == encode_checkpoint(checkpoints[1234])
    assert reader.get(0) == encode_checkpoint(checkpoints[0])
    assert reader.get(2499) == encode_checkpoint(checkpoints[2499])
    assert 1999 in reader and 2500 not in reader
    with pytest.raises(KeyError):
        reader.get(2500)
    # A bundle is one valid zstd stream of concatenated frames.
    with open(tmp_path / "bundle-000000001000.zst", "rb") as file:
        stream = zstandard.ZstdDecompressor().stream_reader(file, read_across_frames=True)
        raw = stream.read()
    assert all(encode_checkpoint(checkpoints[n]) in raw for n in (1000, 1500, 1999))


async def test_archive_repairs_a_torn_frame_and_skips_replays(
    checkpoints: list[Checkpoint], tmp_path: Path
) -> None:
    sink = ArchiveSink(tmp_path, checkpoints_per_bundle=100, level=1)
    for start in range(0, 250, 50):
        await sink.commit(messages(checkpoints, start, start + 50))
    assert_archive_holds(tmp_path, checkpoints, 250)
    last = tmp_path / "bundle-000000000200.zst"
    snapshot = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    # A restarted sink gets the last batch again (the watermark was not saved): skipped.
    sink = ArchiveSink(tmp_path, checkpoints_per_bundle=100, level=1)
    await sink.commit(messages(checkpoints, 200, 250))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == snapshot

    # A crash left half a frame at the end of the last bundle: cut off at the next commit.
    with open(last, "ab") as file:
        file.write(b"\x28\xb5\x2f\xfd" + b"torn frame " * 20_000)  # longer than a frame
    sink = ArchiveSink(tmp_path, checkpoints_per_bundle=100, level=1)
    await sink.commit(messages(checkpoints, 230, 280))  # overlaps: only 250..279 are new
    assert_archive_holds(tmp_path, checkpoints, 280)

    # The frame was written but the index not replaced: the retry writes it once.
    calls = 0
    write_index = sink._write_index

    def failing_write_index(index: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("crash before the index")
        write_index(index)

    sink._write_index = failing_write_index  # type: ignore[method-assign]
    batch = messages(checkpoints, 280, 320)  # crosses into bundle 300
    with pytest.raises(OSError, match="crash before the index"):
        await sink.commit(batch)
    assert load_index(tmp_path).last == 279  # type: ignore[union-attr]
    assert last.stat().st_size > ArchiveReader(tmp_path).index.bundles[-1].end
    await sink.commit(batch)
    assert calls == 2
    assert_archive_holds(tmp_path, checkpoints, 320)
    assert ArchiveReader(tmp_path).get(305) == encode_checkpoint(checkpoints[305])

    with pytest.raises(ConfigurationError, match="checkpoints_per_bundle=100"):
        ArchiveSink(tmp_path, checkpoints_per_bundle=1000).validate()


async def test_archive_resumes_through_the_pipeline(
    checkpoints: list[Checkpoint], tmp_path: Path
) -> None:
    store = MemoryProgressStore()
    archiver = CheckpointArchiver(str(tmp_path / "a"), checkpoints_per_bundle=64)
    await run_worker(archiver, checkpoints[:150], reducer=archiver.sink(), store=store)
    # Re-run from 100 (as after a lost watermark): 100..149 are skipped, 150..199 appended.
    await store.reset("archive", 100)
    result = await run_worker(archiver, checkpoints[:200], reducer=archiver.sink(), store=store)
    assert result.watermark == 200
    assert_archive_holds(tmp_path / "a", checkpoints, 200)
    sink = ArchiveSink(tmp_path, checkpoints_per_bundle=64)
    assert sink.should_close_batch(messages(checkpoints, 60, 64), messages(checkpoints, 64, 65)[0])
    assert not sink.should_close_batch(
        messages(checkpoints, 60, 63), messages(checkpoints, 63, 64)[0]
    )


# -- JsonlSink ------------------------------------------------------------------------------


class Point(NamedTuple):
    x: int
    label: str


class Item(msgspec.Struct):
    name: str
    tags: list[str]


def read_lines(path: Path) -> list[Any]:
    return [
        msgspec.json.decode(line)
        for file in rotated_files(path)
        for line in file.read_bytes().splitlines()
    ]


async def test_jsonl_round_trips_rows(checkpoints: list[Checkpoint], tmp_path: Path) -> None:
    path = tmp_path / "out" / "transactions.jsonl"
    sink = JsonlSink(str(path), fields=list(TransactionExtractor.columns))
    result = await run_worker(TransactionExtractor(), checkpoints[:100], reducer=sink)
    await sink.close()
    assert result.watermark == 100
    expected = [
        {
            "checkpoint": c.sequence_number,
            "digest": tx.digest,
            "sender": tx.sender,
            "event_count": len(tx.events),
            "timestamp_ms": c.timestamp_ms,
        }
        for c in checkpoints[:100]
        for tx in c.transactions
    ]
    assert read_lines(path) == expected
    assert rotated_files(path) == [path]

    other = tmp_path / "mixed.jsonl"
    sink = JsonlSink(str(other))
    await sink.commit([[Point(1, "a"), Point(2, "b")], Item("i", ["t"]), {"k": [1, None]}, []])
    await sink.commit([[(3, "c")]])  # without fields, a tuple is an array
    await sink.close()
    assert other.read_bytes() == (
        b'{"x":1,"label":"a"}\n{"x":2,"label":"b"}\n{"name":"i","tags":["t"]}\n{"k":[1,null]}\n'
        b'[3,"c"]\n'
    )


async def test_jsonl_fields_name_tuple_rows_and_refuse_a_row_of_another_width(
    tmp_path: Path,
) -> None:
    path = tmp_path / "rows.jsonl"
    sink = JsonlSink(str(path), fields=["x", "label"])
    await sink.commit([[(1, "a"), [2, "b"]], Point(3, "c")])
    with pytest.raises(ValueError, match=r"a row of 3 values for 2 fields: \(4, 'd', 5\)"):
        await sink.commit([[(4, "d", 5)]])  # nothing of this batch is written
    await sink.close()
    assert read_lines(path) == [
        {"x": 1, "label": "a"},
        {"x": 2, "label": "b"},
        {"x": 3, "label": "c"},
    ]
    with pytest.raises(ConfigurationError, match="fields must be a list of names"):
        JsonlSink(str(path), fields="x")


async def test_jsonl_commit_is_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "rows.jsonl"
    synced: list[bytes] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        real_fsync(fd)
        synced.append(path.read_bytes())  # what was on the file when it was synced

    monkeypatch.setattr(os, "fsync", spy)
    sink = JsonlSink(str(path))
    await sink.commit([[Point(1, "a")]])
    assert synced == [b'{"x":1,"label":"a"}\n']
    assert path.read_bytes() == b'{"x":1,"label":"a"}\n'  # before close, from another handle
    await sink.commit([Point(2, "b"), Point(3, "c")])
    assert (
        synced[-1]
        == path.read_bytes()
        == (b'{"x":1,"label":"a"}\n{"x":2,"label":"b"}\n{"x":3,"label":"c"}\n')
    )
    await sink.close()


async def test_jsonl_rotates_at_the_byte_limit(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    limit = 1000
    rows = [Point(i, "x" * (i % 37)) for i in range(500)]
    sink = JsonlSink(str(path), max_file_bytes=limit)
    for start in range(0, 300, 7):
        await sink.commit([rows[start : min(start + 7, 300)]])
    await sink.close()
    sink = JsonlSink(str(path), max_file_bytes=limit)  # a restart continues the numbering
    await sink.commit([rows[300:]])
    await sink.close()

    files = rotated_files(path)
    assert files[-1] == path
    assert [f.name for f in files[:-1]] == [f"rows.jsonl.{n}" for n in range(1, len(files))]
    sizes = [f.stat().st_size for f in files]
    assert all(0 < size <= limit for size in sizes)
    line = len(msgspec.json.encode(rows[0]._asdict())) + 40  # longer than any line here
    assert all(size > limit - line for size in sizes[:-1])  # each filled before rotating
    assert read_lines(path) == [row._asdict() for row in rows]

    # A line bigger than the limit gets a file of its own.
    big = {"blob": "y" * 3000}
    sink = JsonlSink(str(path), max_file_bytes=limit)
    await sink.commit([[Point(-1, "")], big, Point(-2, "")])
    await sink.close()
    decoded = read_lines(path)
    assert decoded[-3:] == [{"x": -1, "label": ""}, big, {"x": -2, "label": ""}]
    assert len(decoded) == 503
    assert msgspec.json.decode(rotated_files(path)[-2].read_bytes()) == big


async def test_jsonl_drops_a_torn_line_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"x":1,"label":"a"}\n{"x":2,"lab')
    sink = JsonlSink(str(path))
    await sink.commit([Point(2, "b")])
    await sink.close()
    assert path.read_bytes() == b'{"x":1,"label":"a"}\n{"x":2,"label":"b"}\n'
    with pytest.raises(ConfigurationError):
        JsonlSink(str(path), max_file_bytes=0)


@pytest.mark.parametrize(
    ("make", "store_kind"),
    [
        (lambda: SqliteSink("t", {"checkpoint": "INTEGER"}), "SQLite"),
        (lambda: CounterSink(), "SQLite"),
        (lambda: PostgresSink("t", {"checkpoint": "BIGINT"}), "PostgreSQL"),
    ],
)
async def test_a_sink_without_its_database_is_refused_before_any_work(
    make: Any, store_kind: str, tmp_path: Path
) -> None:
    calls: list[int] = []

    class Counting(TransactionExtractor):
        async def process_checkpoint(self, checkpoint: Checkpoint) -> Any:
            calls.append(checkpoint.sequence_number)
            return await super().process_checkpoint(checkpoint)

    source = SyntheticSource(seed=1)
    with pytest.raises(ConfigurationError, match=f"no .* is set.*is not {store_kind}"):
        await run_worker(Counting(), [source.checkpoint_at(n) for n in range(5)], reducer=make())
    assert calls == []  # refused at start-up, not at the first commit

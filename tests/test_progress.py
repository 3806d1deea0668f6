"""Tests of the progress stores: the shared contract, persistence, and each store's specifics."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from indexer.errors import ProgressStoreError
from indexer.progress import (
    FileProgressStore,
    MemoryProgressStore,
    ProgressStore,
    SqliteProgressStore,
    TransactionalProgressStore,
)


def make_store(kind: str, tmp_path: Path) -> ProgressStore:
    if kind == "memory":
        return MemoryProgressStore()
    if kind == "file":
        return FileProgressStore(tmp_path / "progress.json")
    return SqliteProgressStore(tmp_path / "progress.db")


@pytest.fixture(params=["memory", "file", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ProgressStore]:
    s = make_store(request.param, tmp_path)
    yield s
    await s.close()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteProgressStore]:
    s = SqliteProgressStore(tmp_path / "progress.db")
    yield s
    await s.close()


# --- the contract, for every store ---------------------------------------------------------------


async def test_fresh_store_is_empty(store: ProgressStore) -> None:
    assert await store.load("a") is None
    assert await store.watermarks() == {}
    assert await store.dead_letters() == []


async def test_save_raises_the_watermark(store: ProgressStore) -> None:
    assert await store.save("a", 5) == 5
    assert await store.load("a") == 5
    assert await store.save("a", 9) == 9
    assert await store.load("a") == 9


async def test_lower_save_keeps_the_higher_value(store: ProgressStore) -> None:
    await store.save("a", 10)
    assert await store.save("a", 3) == 10
    assert await store.save("a", 10) == 10
    assert await store.load("a") == 10


async def test_pipelines_are_independent(store: ProgressStore) -> None:
    await store.save("a", 10)
    assert await store.save("b", 3) == 3
    assert await store.load("a") == 10
    assert await store.load("b") == 3


async def test_reset_lowers_and_saves_rise_from_there(store: ProgressStore) -> None:
    await store.save("a", 10)
    await store.reset("a", 2)
    assert await store.load("a") == 2
    assert await store.save("a", 4) == 4
    await store.reset("fresh", 7)
    assert await store.load("fresh") == 7


async def test_watermarks_lists_every_pipeline(store: ProgressStore) -> None:
    await store.save("a", 1)
    await store.save("b", 2)
    await store.reset("c", 0)
    marks = await store.watermarks()
    assert marks == {"a": 1, "b": 2, "c": 0}
    marks["a"] = 99  # a copy: changing it changes nothing
    assert await store.load("a") == 1


async def test_dead_letters_are_recorded_filtered_and_sorted(store: ProgressStore) -> None:
    before = time.time()
    await store.add_dead_letter("a", 7, "boom")
    await store.add_dead_letter("b", 3, "bang")
    await store.add_dead_letter("a", 2, "crash")
    everything = await store.dead_letters()
    assert [(d.pipeline, d.sequence_number, d.error) for d in everything] == [
        ("a", 2, "crash"),
        ("b", 3, "bang"),
        ("a", 7, "boom"),
    ]
    assert all(before <= d.recorded_at <= time.time() for d in everything)
    assert [(d.sequence_number, d.error) for d in await store.dead_letters("a")] == [
        (2, "crash"),
        (7, "boom"),
    ]
    assert await store.dead_letters("nobody") == []


async def test_dead_letter_recorded_again_keeps_the_latest_error(store: ProgressStore) -> None:
    await store.add_dead_letter("a", 5, "first")
    await store.add_dead_letter("a", 5, "second")
    assert [(d.sequence_number, d.error) for d in await store.dead_letters()] == [(5, "second")]


async def test_drop_forgets_one_pipelines_watermark_and_dead_letters(
    store: ProgressStore,
) -> None:
    await store.save("a", 10)
    await store.save("b", 20)
    await store.add_dead_letter("a", 3, "boom")
    await store.add_dead_letter("b", 4, "bang")
    await store.drop("a")
    assert await store.load("a") is None
    assert await store.watermarks() == {"b": 20}
    assert [(d.pipeline, d.sequence_number) for d in await store.dead_letters()] == [("b", 4)]
    await store.drop("a")  # nothing left: no error
    assert await store.save("a", 5) == 5  # a fresh start


async def test_open_close_are_idempotent_and_context_managed(store: ProgressStore) -> None:
    await store.open()
    await store.open()
    assert store.is_open
    await store.close()
    await store.close()
    assert not store.is_open
    async with store as entered:
        assert entered is store
        assert store.is_open
        await store.save("a", 1)
    assert not store.is_open


# --- persistence -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["file", "sqlite"])
async def test_values_survive_a_new_store_instance(kind: str, tmp_path: Path) -> None:
    first = make_store(kind, tmp_path)
    await first.save("a", 12)
    await first.save("b", 40)
    await first.reset("b", 30)
    await first.add_dead_letter("a", 4, "boom")
    letters = await first.dead_letters()
    await first.close()

    async with make_store(kind, tmp_path) as second:
        assert await second.watermarks() == {"a": 12, "b": 30}
        assert await second.save("a", 11) == 12
        assert await second.dead_letters() == letters


@pytest.mark.parametrize("kind", ["file", "sqlite"])
async def test_a_closed_store_reopens_on_use(kind: str, tmp_path: Path) -> None:
    store = make_store(kind, tmp_path)
    await store.save("a", 3)
    await store.close()
    assert await store.load("a") == 3
    await store.close()


async def test_memory_store_copies_its_initial_values() -> None:
    initial = {"a": 5}
    store = MemoryProgressStore(initial)
    initial["a"] = 100
    assert await store.load("a") == 5
    assert await store.save("a", 4) == 5


@given(st.lists(st.integers(min_value=-(2**40), max_value=2**40), min_size=1, max_size=50))
def test_memory_store_keeps_the_running_maximum(values: list[int]) -> None:
    async def run() -> None:
        store = MemoryProgressStore()
        highest = values[0]
        for value in values:
            highest = max(highest, value)
            assert await store.save("p", value) == highest
            assert await store.load("p") == highest

    asyncio.run(run())


# --- FileProgressStore -------------------------------------------------------------------------


async def test_file_missing_is_a_fresh_start_and_reads_create_nothing(tmp_path: Path) -> None:
    path = tmp_path / "progress.json"
    store = FileProgressStore(path)
    await store.open()
    assert await store.load("a") is None
    assert await store.watermarks() == {}
    assert not path.exists()


@pytest.mark.parametrize("content", [b"", b"  \n"])
async def test_file_empty_is_a_fresh_start(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "progress.json"
    path.write_bytes(content)
    store = FileProgressStore(path)
    assert await store.load("a") is None
    assert await store.save("a", 1) == 1
    assert json.loads(path.read_bytes())["watermarks"] == {"a": 1}


async def test_file_parent_directory_is_created(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "progress.json"
    await FileProgressStore(path).save("a", 3)
    content = {"watermarks": {"a": 3}, "dead_letters": [], "stalls": [], "pruned_below": {}}
    assert json.loads(path.read_bytes()) == content


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{not json", "JSON is malformed"),
        (b'{"watermarks": {"a": "7"}}', "Expected `int`, got `str`"),
        (b'{"watermarks": {"a": true}}', "Expected `int`, got `bool`"),
        (b"[1, 2]", "Expected `object`, got `array`"),
        (b'{"dead_letters": [{"pipeline": "a"}]}', "missing required field `sequence_number`"),
        (b"\xff\xfe\x00", "JSON is malformed"),
    ],
)
async def test_file_corrupt_raises_naming_the_file_and_is_not_overwritten(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    path = tmp_path / "progress.json"
    path.write_bytes(content)
    store = FileProgressStore(path)
    with pytest.raises(ProgressStoreError) as caught:
        await store.open()
    message = str(caught.value)
    assert message.startswith(f"{path}: not a valid progress file: ")
    assert reason in message
    assert "\n" not in message
    for write in (store.save("a", 1), store.reset("a", 1), store.add_dead_letter("a", 1, "x")):
        with pytest.raises(ProgressStoreError):
            await write
    assert path.read_bytes() == content
    assert os.listdir(tmp_path) == ["progress.json"]


async def test_file_is_valid_json_after_every_write_and_no_temp_files_remain(
    tmp_path: Path,
) -> None:
    path = tmp_path / "progress.json"
    store = FileProgressStore(path)
    expected: dict[str, int] = {}
    for pipeline, value in [("a", 1), ("b", 5), ("a", 9), ("b", 6)]:
        await store.save(pipeline, value)
        expected[pipeline] = value
        assert json.loads(path.read_bytes())["watermarks"] == expected
        assert os.listdir(tmp_path) == ["progress.json"]
    await store.add_dead_letter("a", 3, "boom")
    letters = json.loads(path.read_bytes())["dead_letters"]
    assert [(d["pipeline"], d["sequence_number"], d["error"]) for d in letters] == [
        ("a", 3, "boom")
    ]
    assert isinstance(letters[0]["recorded_at"], float)
    assert os.listdir(tmp_path) == ["progress.json"]


async def test_file_save_that_does_not_raise_does_not_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "progress.json"
    store = FileProgressStore(path)
    await store.save("a", 10)

    def identity() -> tuple[int, int, bytes]:
        stat = path.stat()
        return stat.st_ino, stat.st_mtime_ns, path.read_bytes()

    before = identity()
    assert await store.save("a", 4) == 10
    assert await store.save("a", 10) == 10
    assert identity() == before
    await store.save("a", 11)  # a raising save replaces the file with a new inode
    assert identity()[0] != before[0]


async def test_file_write_fsyncs_the_file_and_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    await FileProgressStore(tmp_path / "progress.json").save("a", 1)
    assert len(synced) == 2
    assert Path(synced[0]).parent == tmp_path and synced[0].endswith(".tmp")
    assert synced[1] == str(tmp_path)


async def test_file_failed_write_raises_and_keeps_old_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "progress.json"
    store = FileProgressStore(path)
    await store.save("a", 1)

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(ProgressStoreError, match=r"progress\.json: cannot write progress file"):
        await store.save("a", 2)
    assert await store.load("a") == 1
    assert json.loads(path.read_bytes())["watermarks"] == {"a": 1}
    assert os.listdir(tmp_path) == ["progress.json"]


# --- SqliteProgressStore -----------------------------------------------------------------------


def read_db(path: Path, sql: str) -> list[tuple[object, ...]]:
    """Query the database through a separate, plain sqlite3 connection."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def test_sqlite_is_transactional_and_exposes_its_path(tmp_path: Path) -> None:
    store = SqliteProgressStore(str(tmp_path / "progress.db"))
    assert isinstance(store, TransactionalProgressStore)
    assert store.path == tmp_path / "progress.db"
    assert isinstance(store.path, Path)


async def test_a_cancelled_open_leaves_no_connection_thread(tmp_path: Path) -> None:
    """A run stopped while its store opens (cancelled in the schema's setup) closes the new
    connection: an aiosqlite connection left open is a thread left running."""
    from indexer._sqlite import SharedConnection

    entered = asyncio.Event()

    async def setup(conn: object) -> None:
        entered.set()
        await asyncio.Event().wait()  # cancelled here

    db = SharedConnection(
        tmp_path / "db.sqlite", what="test database", reentry="re-entered", schema=[], setup=setup
    )
    before = set(threading.enumerate())
    opening = asyncio.create_task(db.open())
    await entered.wait()
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    started = [t for t in threading.enumerate() if t not in before]
    for thread in started:
        thread.join(timeout=5)
    assert not [t.name for t in started if t.is_alive()]


async def test_sqlite_open_creates_directory_tables_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "progress.db"
    async with SqliteProgressStore(path) as store, store.transaction("p", 0) as conn:
        assert await conn.execute_fetchall("PRAGMA synchronous") == [(2,)]  # FULL
    tables = read_db(path, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
    assert tables == [
        ("indexer_dead_letters",),
        ("indexer_pruned",),
        ("indexer_stalls",),
        ("indexer_watermarks",),
    ]
    assert read_db(path, "PRAGMA journal_mode") == [("wal",)]


async def test_sqlite_non_database_file_raises_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "progress.db"
    content = b"this is not a database\n" * 200
    path.write_bytes(content)
    store = SqliteProgressStore(path)
    with pytest.raises(ProgressStoreError) as caught:
        await store.open()
    message = str(caught.value)
    assert message.startswith(f"{path}: cannot open progress database")
    assert "not a database" in message and "\n" not in message
    assert not store.is_open
    with pytest.raises(ProgressStoreError, match="not a database"):
        await store.load("a")  # the lazy open fails the same way
    assert path.read_bytes() == content


async def test_sqlite_unopenable_path_raises_naming_the_path(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("x")
    for path in (tmp_path, tmp_path / "a_file" / "progress.db"):
        with pytest.raises(ProgressStoreError) as caught:
            await SqliteProgressStore(path).open()
        assert str(caught.value).startswith(f"{path}: cannot open progress database")


async def test_sqlite_failed_connect_leaves_no_worker_thread(tmp_path: Path) -> None:
    # aiosqlite does not wait for its worker thread when connecting fails; a thread left behind
    # later fails with "Event loop is closed" once the test's loop is gone.
    before = set(threading.enumerate())
    with pytest.raises(ProgressStoreError):
        await SqliteProgressStore(tmp_path).open()
    assert [t for t in threading.enumerate() if t not in before and t.is_alive()] == []


async def test_sqlite_transaction_commits_rows_and_watermark_together(
    sqlite_store: SqliteProgressStore,
) -> None:
    async with sqlite_store.transaction("p", 10) as conn:
        await conn.execute("CREATE TABLE items (n INTEGER)")
        await conn.executemany("INSERT INTO items VALUES (?)", [(1,), (2,), (3,)])
    await sqlite_store.close()
    path = sqlite_store.path
    assert read_db(path, "SELECT n FROM items ORDER BY n") == [(1,), (2,), (3,)]
    assert read_db(path, "SELECT pipeline, next_checkpoint FROM indexer_watermarks") == [("p", 10)]
    async with SqliteProgressStore(path) as fresh:
        assert await fresh.load("p") == 10


async def test_sqlite_transaction_that_raises_rolls_back_rows_and_watermark(
    sqlite_store: SqliteProgressStore,
) -> None:
    async with sqlite_store.transaction("p", 5) as conn:
        await conn.execute("CREATE TABLE items (n INTEGER)")
        await conn.execute("INSERT INTO items VALUES (1)")
    with pytest.raises(RuntimeError, match="sink failed"):
        async with sqlite_store.transaction("p", 20) as conn:
            await conn.execute("INSERT INTO items VALUES (2)")
            raise RuntimeError("sink failed")
    assert await sqlite_store.load("p") == 5
    assert read_db(sqlite_store.path, "SELECT n FROM items") == [(1,)]
    async with sqlite_store.transaction("p", 6) as conn:  # nothing left open
        await conn.execute("INSERT INTO items VALUES (3)")
    assert await sqlite_store.load("p") == 6
    assert read_db(sqlite_store.path, "SELECT n FROM items ORDER BY n") == [(1,), (3,)]


async def test_sqlite_rewind_lowers_the_watermark_with_the_rows_or_neither(
    sqlite_store: SqliteProgressStore,
) -> None:
    async with sqlite_store.transaction("p", 30) as conn:
        await conn.execute("CREATE TABLE items (n INTEGER)")
        await conn.executemany("INSERT INTO items VALUES (?)", [(10,), (20,)])
    with pytest.raises(RuntimeError, match="delete failed"):
        async with sqlite_store.rewind("p", 15) as conn:
            await conn.execute("DELETE FROM items WHERE n >= 15")
            raise RuntimeError("delete failed")
    assert await sqlite_store.load("p") == 30
    assert read_db(sqlite_store.path, "SELECT n FROM items ORDER BY n") == [(10,), (20,)]
    async with sqlite_store.rewind("p", 15) as conn:
        await conn.execute("DELETE FROM items WHERE n >= 15")
    assert await sqlite_store.load("p") == 15
    assert read_db(sqlite_store.path, "SELECT n FROM items") == [(10,)]


async def test_sqlite_transaction_watermark_is_rise_only(
    sqlite_store: SqliteProgressStore,
) -> None:
    await sqlite_store.save("p", 50)
    async with sqlite_store.transaction("p", 10) as conn:
        await conn.execute("CREATE TABLE items (n INTEGER)")
        await conn.execute("INSERT INTO items VALUES (7)")
    assert await sqlite_store.load("p") == 50
    assert read_db(sqlite_store.path, "SELECT n FROM items") == [(7,)]


async def test_sqlite_transaction_opens_lazily(tmp_path: Path) -> None:
    store = SqliteProgressStore(tmp_path / "lazy.db")
    async with store.transaction("p", 3):
        pass
    assert store.is_open
    assert await store.load("p") == 3
    await store.close()


async def test_sqlite_save_waits_for_an_open_transaction(
    sqlite_store: SqliteProgressStore,
) -> None:
    with pytest.raises(RuntimeError):
        async with sqlite_store.transaction("p", 9) as conn:
            saving = asyncio.create_task(sqlite_store.save("q", 100))
            await asyncio.sleep(0)  # let the save start; it must queue behind the transaction
            await conn.execute_fetchall("SELECT 1")  # anything the save sent has now run
            assert not saving.done()
            raise RuntimeError("roll back")
    assert await saving == 100  # ran after the rollback, so it was not undone
    assert await sqlite_store.watermarks() == {"q": 100}


async def test_sqlite_store_used_inside_its_own_transaction_fails_fast(
    sqlite_store: SqliteProgressStore,
) -> None:
    async def misuse() -> None:
        async with sqlite_store.transaction("p", 1):
            await sqlite_store.save("p", 2)

    with pytest.raises(ProgressStoreError, match="inside its own transaction"):
        await asyncio.wait_for(misuse(), timeout=10)
    assert await sqlite_store.load("p") is None


async def test_sqlite_cancelled_transaction_rolls_back(sqlite_store: SqliteProgressStore) -> None:
    async with sqlite_store.transaction("p", 1) as conn:
        await conn.execute("CREATE TABLE items (n INTEGER)")
    inside = asyncio.Event()

    async def stuck() -> None:
        async with sqlite_store.transaction("p", 2) as conn:
            await conn.execute("INSERT INTO items VALUES (1)")
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(stuck())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await sqlite_store.load("p") == 1
    assert read_db(sqlite_store.path, "SELECT n FROM items") == []
    async with sqlite_store.transaction("p", 3):
        pass
    assert await sqlite_store.load("p") == 3

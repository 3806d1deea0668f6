"""SQLite writes that keep the GIL and the write lock short: ``insert_rows`` (thousands of rows
per statement) does what ``executemany`` does, and ``begin_immediate`` waits for a busy file by
polling instead of SQLite's growing sleeps."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indexer._sqlite import begin_immediate
from indexer.sinks import insert_rows

VALUES = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=8),
)


def table(width: int, limit: int | None = None, key: bool = False) -> sqlite3.Connection:
    db = sqlite3.connect(":memory:", isolation_level=None)
    if limit is not None:  # few parameters per statement: a batch needs several statements
        db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, limit)
    columns = ", ".join(f"c{i}" for i in range(width))
    db.execute(f"CREATE TABLE t (n INTEGER PRIMARY KEY AUTOINCREMENT, {columns})")
    if key:
        db.execute("CREATE UNIQUE INDEX t_key ON t (c0)")
    return db


def contents(db: sqlite3.Connection, width: int) -> list[tuple[Any, ...]]:
    columns = ", ".join(f"c{i}" for i in range(width))
    return db.execute(f"SELECT {columns} FROM t ORDER BY n").fetchall()


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(1, 6),
    data=st.data(),
    limit=st.sampled_from([None, 7, 30]),
)
def test_insert_rows_stores_what_executemany_stores(
    width: int, data: Any, limit: int | None
) -> None:
    rows = data.draw(st.lists(st.tuples(*[VALUES] * width), max_size=40))
    columns = ", ".join(f"c{i}" for i in range(width))
    ours, theirs = table(width, limit), table(width)
    insert_rows(ours, f"INSERT INTO t ({columns})", width, rows)
    theirs.executemany(f"INSERT INTO t ({columns}) VALUES ({', '.join('?' * width)})", rows)
    assert contents(ours, width) == contents(theirs, width) == [tuple(r) for r in rows]


def test_insert_rows_takes_lists_and_named_tuples_and_an_upsert_clause() -> None:
    db = table(2, limit=4, key=True)  # two rows per statement
    rows: list[Any] = [(1, "a"), [2, "b"], (1, "c"), (3, "d"), (2, "e")]
    insert_rows(
        db, "INSERT INTO t (c0, c1)", 2, rows, "ON CONFLICT (c0) DO UPDATE SET c1 = excluded.c1"
    )
    # Later rows win, as with one statement per row, across statement boundaries too.
    assert sorted(contents(db, 2)) == [(1, "c"), (2, "e"), (3, "d")]


def test_insert_rows_compiles_a_few_shapes_of_statement_whatever_the_batch_lengths() -> None:
    """A statement per batch length would be compiled and cached for each (MBs apiece)."""
    db = table(5)
    seen: set[str] = set()
    db.set_trace_callback(seen.add)
    for length in range(1, 3000, 7):
        insert_rows(db, "INSERT INTO t (c0, c1, c2, c3, c4)", 5, [(1, 2, 3, 4, 5)] * length)
    assert len(seen) <= 11  # 1, 2, 4, ..., 1024 rows
    assert db.execute("SELECT count(*) FROM t").fetchone() == (sum(range(1, 3000, 7)),)


def test_a_row_of_the_wrong_width_is_refused_before_anything_is_written() -> None:
    db = table(3)
    rows = [(1, 2, 3), (4, 5), (6, 7, 8, 9)]  # a short row and a long one: the sum is right
    with pytest.raises(
        sqlite3.ProgrammingError, match=r"row 1 of the batch has 2 values, 3 expected"
    ):
        insert_rows(db, "INSERT INTO t (c0, c1, c2)", 3, rows)
    assert contents(db, 3) == []


def test_begin_immediate_waits_for_the_lock_then_takes_it(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("PRAGMA journal_mode=WAL")
    waiter = sqlite3.connect(path, isolation_level=None, timeout=7.0)
    holder.execute("BEGIN IMMEDIATE")
    waiting = threading.Event()
    released = threading.Event()

    def release_once_waited() -> None:
        waiting.wait(10)
        holder.execute("COMMIT")
        released.set()

    thread = threading.Thread(target=release_once_waited)
    thread.start()
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            begin_immediate(waiter, timeout=0.05)  # held: gives up after its timeout
        assert waiter.execute("PRAGMA busy_timeout").fetchone() == (50,)  # as it was given
        assert not waiter.in_transaction
        waiting.set()
        begin_immediate(waiter, timeout=7.0)  # taken once the holder commits
        assert released.is_set() and waiter.in_transaction
        waiter.execute("COMMIT")
        assert waiter.execute("PRAGMA busy_timeout").fetchone() == (7000,)
    finally:
        waiting.set()
        thread.join()


def test_begin_immediate_raises_other_errors_at_once(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    db.execute("BEGIN")  # already in a transaction: not a busy file, no waiting
    with pytest.raises(sqlite3.OperationalError, match="within a transaction"):
        begin_immediate(db, timeout=30.0)
    assert db.execute("PRAGMA busy_timeout").fetchone() == (30_000,)

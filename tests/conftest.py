"""Shared fixtures: a PostgreSQL DSN (or a skip), a fresh schema per test, a thread-leak guard."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--slow", action="store_true", help="Also run the tests marked slow (CI runs them)."
    )


def slow_tests_run(config: pytest.Config) -> bool:
    """Whether the tests marked ``slow`` run: in CI (``CI`` set) or with ``--slow``."""
    return bool(config.getoption("--slow") or os.environ.get("CI"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` run in CI or with ``--slow``; skipped otherwise. Tests marked
    ``fast_stand_in`` stand in for a slow one when it does not run, and are skipped when it
    does (it covers them)."""
    slow = slow_tests_run(config)
    skip = pytest.mark.skip(reason="slow: runs in CI, or with --slow")
    covered = pytest.mark.skip(reason="covered by a slow test that runs")
    for item in items:
        if "slow" in item.keywords and not slow:
            item.add_marker(skip)
        if "fast_stand_in" in item.keywords and slow:
            item.add_marker(covered)


@pytest.fixture(autouse=True)
def no_leftover_programs() -> Iterator[None]:
    """A failing test must not leave a program it started running (some would run forever)."""
    from harness import kill_leftovers

    yield
    kill_leftovers()


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a non-daemon thread running (an unclosed aiosqlite connection,
    an executor never shut down): the interpreter would wait for it at exit and hang the run."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
    for thread in leaked:
        thread.join(timeout=1.0)  # one finishing its last step is not a leak
    leaked = [t.name for t in leaked if t.is_alive()]
    assert not leaked, f"test left non-daemon threads running: {leaked}"


@pytest.fixture
def postgres_dsn() -> str:
    """The test server's DSN from ``INDEXER_TEST_POSTGRES_DSN``; skips (fails in CI) if unset."""
    dsn = os.environ.get("INDEXER_TEST_POSTGRES_DSN")
    if not dsn:
        if os.environ.get("INDEXER_REQUIRE_POSTGRES") == "1":
            pytest.fail("INDEXER_TEST_POSTGRES_DSN is required in CI")
        pytest.skip(
            "PostgreSQL tests need INDEXER_TEST_POSTGRES_DSN "
            "(make test sets it when a server answers at 127.0.0.1:5432)"
        )
    return dsn


@pytest.fixture
async def pg_schema(postgres_dsn: str) -> AsyncIterator[str]:
    """A fresh, empty schema, dropped with everything in it after the test."""
    import asyncpg

    name = f"t_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(f'CREATE SCHEMA "{name}"')
    finally:
        await conn.close()
    yield name
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


async def _postgres_tables(dsn: str) -> set[str]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        )
    finally:
        await conn.close()
    return {row[0] for row in rows}


@pytest.fixture(scope="session", autouse=True)
def postgres_left_as_found() -> Iterator[None]:
    """Each test creates and drops its own schema or tables: the test database holds no new
    table when the session ends (a leftover shows up as a phantom pipeline in
    ``indexer status``)."""
    import asyncio

    dsn = os.environ.get("INDEXER_TEST_POSTGRES_DSN")
    before = asyncio.run(_postgres_tables(dsn)) if dsn else set()
    yield
    if dsn:
        left = asyncio.run(_postgres_tables(dsn)) - before
        assert not left, f"tests left tables in the test database: {sorted(left)[:10]}"

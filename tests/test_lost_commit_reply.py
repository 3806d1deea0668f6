"""A COMMIT whose reply is lost (the server committed, the client saw its connection drop) is
checked, not repeated: through the real ``indexer run`` and a real TCP proxy that drops
exactly that reply, every row is in the database once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import tomli_w
from harness import Background, run_indexer
from pgproxy import CommitReplyDropper

from indexer.sources import SyntheticSource

COUNT = 300
SEED = 9


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("lost-reply") / "feed"
    done = run_indexer("generate", "--out", directory, "--count", COUNT, "--seed", SEED)
    assert done.returncode == 0, done.stderr
    return directory


def expected_digests() -> list[str]:
    source = SyntheticSource(seed=SEED)
    return sorted(tx.digest for n in range(COUNT) for tx in source.checkpoint_at(n).transactions)


def through(dsn: str, port: int) -> str:
    """``dsn`` with its host and port those of the proxy, SSL off (the proxy reads messages)."""
    parts = urlsplit(dsn)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    query = "&".join(filter(None, [parts.query, "sslmode=disable"]))
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def write_config(path: Path, feed: Path, dsn: str, schema: str) -> Path:
    columns = {
        "checkpoint": "BIGINT",
        "digest": "TEXT",
        "sender": "TEXT",
        "event_count": "BIGINT",
        "timestamp_ms": "BIGINT",
    }
    config: dict[str, Any] = {
        "source": {"feed": str(feed), "follow": False},
        "progress": {"store": dsn, "schema": schema},
        "metrics": {"enabled": False},
        "logging": {"progress": False, "format": "json"},
        "scale": {"chunk_size": 100},
        "pipelines": {
            "transactions": {
                "worker": "workers:TransactionExtractor",
                "concurrency": 4,
                "reducer": {
                    "class": "reducers:PostgresSink",
                    "max_batch_size": 10,
                    "max_batch_age": 0.05,
                    "options": {"table": "transactions", "schema": schema, "columns": columns},
                },
            }
        },
    }
    path.write_text(tomli_w.dumps(config), encoding="utf-8")
    return path


async def digests(dsn: str, schema: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(f'SELECT digest FROM "{schema}".transactions')
    finally:
        await conn.close()
    return sorted(row[0] for row in rows)


@pytest.mark.parametrize("chunked", [False, True], ids=["one-process", "claims"])
def test_a_commit_whose_reply_is_lost_is_not_written_again(
    feed: Path, tmp_path: Path, postgres_dsn: str, pg_schema: str, chunked: bool
) -> None:
    target = urlsplit(postgres_dsn)
    with CommitReplyDropper(target.hostname or "127.0.0.1", target.port or 5432, nth=3) as proxy:
        dsn = through(postgres_dsn, proxy.port)
        config = write_config(tmp_path / "config.toml", feed, dsn, pg_schema)
        args = ["--claims", dsn] if chunked else []
        run = Background.indexer("run", "-c", config, "--last-checkpoint", COUNT - 1, *args)
        assert run.finish() == 0, run.describe()
        assert proxy.dropped == 1, "the proxy lost no COMMIT reply: the test tested nothing"
    assert asyncio.run(digests(postgres_dsn, pg_schema)) == expected_digests()  # each once
    failed = [e for e in run.events() if e["event"].endswith("failed, retrying")]
    assert failed, run.describe()  # the lost reply was seen as a failure ...
    assert [e for e in run.events() if e["event"].endswith("committed already")]  # ... checked

"""``indexer reset``: a typo is refused, ``--drop`` forgets a pipeline, and the rows a sink
wrote either stay (with a warning) or go with ``--delete-rows``, so that a re-index writes each
row once. Every case through the real command, on a job it ran first."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import tomli_w
from harness import TRANSACTION_COLUMN_TYPES, run_indexer, saved_watermark

from indexer.progress import SqliteProgressStore
from indexer.sources import SyntheticSource

COUNT = 200
SEED = 11
PIPELINE = "transactions"
COLUMNS = TRANSACTION_COLUMN_TYPES


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("reset") / "feed"
    done = run_indexer("generate", "--out", directory, "--count", COUNT, "--seed", SEED)
    assert done.returncode == 0, done.stderr
    return directory


def expected_digests(first: int = 0) -> list[str]:
    """The digests of checkpoints ``first``.. of the feed, from the generator itself."""
    source = SyntheticSource(seed=SEED)
    return sorted(
        tx.digest for n in range(first, COUNT) for tx in source.checkpoint_at(n).transactions
    )


def write_config(
    tmp_path: Path, feed: Path, store: str, sink: str = "reducers:SqliteSink", **options: Any
) -> Path:
    """TransactionExtractor into ``sink`` (in the store's database unless ``options`` say)."""
    config = {
        "source": {"feed": str(feed), "follow": False},
        "progress": {"store": store},
        "metrics": {"enabled": False},
        "logging": {"progress": False, "format": "json"},
        "pipelines": {
            PIPELINE: {
                "worker": "workers:TransactionExtractor",
                "reducer": {
                    "class": sink,
                    "max_batch_size": 20,
                    "options": {"table": "transactions", "columns": COLUMNS, **options},
                },
            }
        },
    }
    path = tmp_path / "config.toml"
    path.write_text(tomli_w.dumps(config), encoding="utf-8")
    return path


def index_all(config: Path) -> None:
    done = run_indexer("run", "-c", config, "--last-checkpoint", COUNT - 1)
    assert done.returncode == 0, done.stderr


def reset(config: Path, *args: Any) -> Any:
    return run_indexer("reset", "-c", config, "--pipeline", PIPELINE, *args)


def sqlite_digests(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        found = sorted(row[0] for row in conn.execute("SELECT digest FROM transactions"))
    conn.close()
    return found


def sqlite_rows(db: Path, sql: str) -> list[Any]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(sql).fetchall()
    conn.close()
    return rows


def test_a_typo_is_refused_naming_the_known_pipelines(feed: Path, tmp_path: Path) -> None:
    db = tmp_path / "index.db"
    config = write_config(tmp_path, feed, f"sqlite:{db}")
    index_all(config)
    done = run_indexer("reset", "-c", config, "--pipeline", "transactionz", "--to", 5, "--force")
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        f"indexer: error: unknown pipeline 'transactionz': neither {config} nor the store "
        f"sqlite:{db} has it (known: transactions)\n"
    )
    names = sqlite_rows(db, "SELECT pipeline FROM indexer_watermarks")
    assert names == [(PIPELINE,)]  # no phantom pipeline


def test_a_reset_says_that_the_sinks_rows_stay(feed: Path, tmp_path: Path) -> None:
    db = tmp_path / "index.db"
    config = write_config(tmp_path, feed, f"sqlite:{db}")
    index_all(config)
    done = reset(config, "--to", 150, "--force")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"reset pipeline 'transactions' from {COUNT} to 150 in sqlite:{db}\n"
    assert done.stderr == (
        "indexer: warning: pipeline 'transactions' writes with SqliteSink 'transactions': the "
        "rows of checkpoints 150 and later stay and a re-index writes them again "
        "(--delete-rows deletes them)\n"
    )
    assert saved_watermark(db, PIPELINE) == 150
    assert sqlite_digests(db) == expected_digests()  # nothing deleted


@pytest.mark.parametrize("where", ["store's database", "own database"])
def test_delete_rows_then_a_rerun_writes_every_row_once_on_sqlite(
    feed: Path, tmp_path: Path, where: str
) -> None:
    db = tmp_path / "index.db"
    rows_db = db if where == "store's database" else tmp_path / "rows.db"
    options = {} if where == "store's database" else {"path": str(rows_db)}
    config = write_config(tmp_path, feed, f"sqlite:{db}", **options)
    index_all(config)
    dry = reset(config, "--to", 120, "--delete-rows")
    assert dry.returncode == 2, dry.stderr
    assert "would reset pipeline 'transactions' from 200 to 120, delete the rows" in dry.stderr
    assert sqlite_digests(rows_db) == expected_digests()  # a dry run changes nothing

    done = reset(config, "--to", 120, "--delete-rows", "--force")
    assert done.returncode == 0, done.stderr
    deleted = len(expected_digests(120))
    assert done.stdout == (
        f"reset pipeline 'transactions' from {COUNT} to 120, deleted {deleted} rows of "
        f"SqliteSink 'transactions' from checkpoint 120 on in sqlite:{db}\n"
    )
    assert done.stderr == ""
    assert saved_watermark(db, PIPELINE) == 120
    assert sqlite_digests(rows_db) == sorted(set(expected_digests()) - set(expected_digests(120)))
    index_all(config)
    assert sqlite_digests(rows_db) == expected_digests()  # every row once


def test_delete_rows_then_a_rerun_writes_every_row_once_on_postgresql(
    feed: Path, tmp_path: Path, postgres_dsn: str, pg_schema: str
) -> None:
    config = write_config(
        tmp_path, feed, postgres_dsn, sink="reducers:PostgresSink", schema=pg_schema
    )
    text = config.read_text(encoding="utf-8").replace(
        "[progress]\n", f'[progress]\nschema = "{pg_schema}"\n'
    )
    config.write_text(text, encoding="utf-8")
    index_all(config)
    done = reset(config, "--to", 60, "--delete-rows", "--force")
    assert done.returncode == 0, done.stderr
    assert f"deleted {len(expected_digests(60))} rows of PostgresSink 'transactions'" in (
        done.stdout
    )

    async def digests() -> tuple[list[str], int]:
        conn = await asyncpg.connect(postgres_dsn)
        try:
            rows = await conn.fetch(f'SELECT digest FROM "{pg_schema}".transactions')
            mark = await conn.fetchval(
                f'SELECT next_checkpoint FROM "{pg_schema}".indexer_watermarks'
            )
        finally:
            await conn.close()
        return sorted(row[0] for row in rows), mark

    assert asyncio.run(digests()) == (
        sorted(set(expected_digests()) - set(expected_digests(60))),
        60,
    )
    index_all(config)
    assert asyncio.run(digests()) == (expected_digests(), COUNT)


def test_delete_rows_is_refused_for_a_sink_without_a_checkpoint_column(
    feed: Path, tmp_path: Path
) -> None:
    db = tmp_path / "index.db"
    config = write_config(tmp_path, feed, f"sqlite:{db}", checkpoint_column="")
    index_all(config)
    done = reset(config, "--to", 10, "--delete-rows", "--force")
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        "indexer: error: --delete-rows: pipeline 'transactions': SqliteSink 'transactions' "
        "cannot delete rows by checkpoint (a DatabaseSink with a checkpoint_column can)\n"
    )
    assert saved_watermark(db, PIPELINE) == COUNT  # nothing changed
    assert sqlite_digests(db) == expected_digests()


def test_drop_forgets_the_watermark_dead_letters_and_chunks(feed: Path, tmp_path: Path) -> None:
    db = tmp_path / "index.db"
    config = write_config(tmp_path, feed, f"sqlite:{db}")
    done = run_indexer(
        "run", "-c", config, "--last-checkpoint", COUNT - 1, "--processes", 2, "--chunk-size", 50
    )
    assert done.returncode == 0, done.stderr

    async def add_dead_letter() -> None:
        async with SqliteProgressStore(db) as store:
            await store.add_dead_letter(PIPELINE, 7, "ValueError('bad')")
            await store.add_dead_letter("other", 3, "ValueError('kept')")

    asyncio.run(add_dead_letter())
    done = reset(config, "--drop", "--force")
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f"dropped pipeline 'transactions' (watermark {COUNT}, 1 dead letters, 4 chunk claims) "
        f"in sqlite:{db}\n"
    )
    assert "the rows it wrote stay" in done.stderr
    for table in ("indexer_watermarks", "indexer_dead_letters", "indexer_claims"):
        assert sqlite_rows(db, f"SELECT * FROM {table} WHERE pipeline = '{PIPELINE}'") == []
    assert sqlite_rows(db, "SELECT pipeline FROM indexer_dead_letters") == [("other",)]
    report = json.loads(run_indexer("status", "-c", config, "--json").stdout)
    (row,) = [row for row in report["pipelines"] if row["pipeline"] == PIPELINE]
    assert row["watermark"] is None and "chunks" not in row
    index_all(config)  # starts again from the beginning: the rows are written a second time
    assert sqlite_digests(db) == sorted(expected_digests() * 2)


@pytest.mark.parametrize("args", [[], ["--to", "3", "--drop"]], ids=["neither", "both"])
def test_either_to_or_drop(tmp_path: Path, args: list[str]) -> None:
    done = run_indexer("reset", "--store", f"sqlite:{tmp_path / 'x.db'}", "--pipeline", "p", *args)
    assert done.returncode == 2
    assert (
        done.stderr == "indexer: error: give either --to N or --drop (see 'indexer reset --help')\n"
    )


def test_drop_with_delete_rows_leaves_neither_rows_nor_watermark(
    feed: Path, tmp_path: Path
) -> None:
    db = tmp_path / "index.db"
    config = write_config(tmp_path, feed, f"sqlite:{db}")
    index_all(config)
    done = reset(config, "--drop", "--delete-rows", "--force")
    assert done.returncode == 0, done.stderr
    assert f"deleted {len(expected_digests())} rows of SqliteSink 'transactions'" in done.stdout
    assert sqlite_digests(db) == []
    assert saved_watermark(db, PIPELINE) is None
    index_all(config)
    assert sqlite_digests(db) == expected_digests()

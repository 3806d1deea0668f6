"""Pipelines of different speeds under the real ``indexer run``: a held pipeline does not hold
back the others, a pipeline added to a config that has run starts at 0 without dragging the
one ahead back, each pipeline's sink gets every row once, and the metrics show the cohorts.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import tomli_w
from harness import TRANSACTION_COLUMN_TYPES, Background, free_port, run_indexer, saved_watermark
from prometheus_client.parser import text_string_to_metric_families
from test_health import get

from indexer.sources import SyntheticSource, write_feed

COUNT = 2000
COLUMNS = TRANSACTION_COLUMN_TYPES


def pipeline(table: str, worker: str = "workers:TransactionExtractor") -> dict[str, Any]:
    """TransactionExtractor (or ``worker``) into a SqliteSink table in the store's file."""
    return {
        "worker": worker,
        "reducer": {
            "class": "reducers:SqliteSink",
            "max_batch_size": 100,
            "max_batch_age": 0.05,
            "options": {"table": table, "columns": COLUMNS},
        },
        "max_inflight": 200,
    }


def write_config(directory: Path, pipelines: dict[str, Any], port: int | None = None) -> Path:
    config = {
        "source": {"feed": str(directory / "feed"), "follow": False},
        "progress": {"store": "sqlite:index.db"},
        "run": {"cohort_distance": 500},
        "metrics": {"enabled": port is not None, "address": f"127.0.0.1:{port or 9}"},
        "logging": {"format": "json", "progress": False},
        "pipelines": pipelines,
    }
    path = directory / "config.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def rows(db: Path, table: str) -> list[int]:
    """Each row's checkpoint, in insertion order."""
    with sqlite3.connect(db) as conn:
        return [n for (n,) in conn.execute(f"SELECT checkpoint FROM {table} ORDER BY rowid")]


def expected_rows(first: int, stop: int) -> list[int]:
    """The checkpoint of each transaction of checkpoints ``first..stop-1``, in order."""
    source = SyntheticSource(seed=5)
    return [n for n in range(first, stop) for _ in source.checkpoint_at(n).transactions]


def cohorts(port: int) -> dict[str, set[str]] | None:
    """Cohort name -> its pipelines, from ``/metrics``."""
    got = get(port, "/metrics")
    if got is None:
        return None
    members: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(got[1].decode()):
        for sample in family.samples:
            if sample.name == "indexer_cohort_member" and sample.value == 1:
                members.setdefault(sample.labels["cohort"], set()).add(sample.labels["pipeline"])
    return members


def test_a_held_pipeline_does_not_hold_back_the_other_and_a_new_one_starts_at_0(
    tmp_path: Path,
) -> None:
    asyncio.run(write_feed(SyntheticSource(seed=5), tmp_path / "feed", count=COUNT))
    db, hold, port = tmp_path / "index.db", tmp_path / "hold", free_port()
    hold.touch()
    config = write_config(
        tmp_path,
        {
            "held": pipeline("held", "slow_workers:SlowTransactionExtractor")
            | {"options": {"delay": 0.0}},
            "free": pipeline("free"),
        },
        port,
    )
    run = Background.indexer(
        "run", "-c", config, cwd=tmp_path,
        env={"SLOW_WORKER_HOLD_FROM": "100", "SLOW_WORKER_HOLD_WHILE": str(hold)},
    )  # fmt: skip
    # "free" reaches the end while "held" waits at checkpoint 100: it reads on its own.
    run.wait_until("free at the end", lambda: saved_watermark(db, "free") == COUNT)
    assert (saved_watermark(db, "held") or 0) <= 100
    split = run.wait_until("held in a cohort of its own", lambda: cohorts(port))
    assert {"held"} in split.values(), split
    hold.unlink()
    assert run.finish() == 0, run.describe()
    assert rows(db, "held") == rows(db, "free") == expected_rows(0, COUNT)
    assert run.events_named("pipeline reads on its own: it fell behind its cohort")

    # A pipeline added to the config starts at 0; the others resume where they were.
    more = COUNT + 500
    asyncio.run(write_feed(SyntheticSource(seed=5), tmp_path / "feed", count=more))
    config = write_config(
        tmp_path, {"held": pipeline("held"), "free": pipeline("free"), "new": pipeline("new")}
    )
    done = run_indexer("run", "-c", config, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert rows(db, "new") == expected_rows(0, more)
    assert rows(db, "held") == rows(db, "free") == expected_rows(0, more)

"""A config file's relative paths lead beside the file, wherever the command runs: its feed, its
store, a sink's ``path`` and the modules its ``module:Class`` names import. A flag's or an
``INDEXER_*`` variable's relative path is the caller's: relative to the working directory.

Each test runs the real binary from one directory with ``-c`` naming a config in another."""

from __future__ import annotations

import sqlite3
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from harness import Background, run_indexer, saved_watermark

LAST = 9  # runs index checkpoints 0..9


@pytest.fixture
def job(tmp_path: Path) -> Path:
    """A job directory with a feed of checkpoints 0..9; the tests run from ``elsewhere``."""
    directory = tmp_path / "job"
    done = run_indexer("generate", "--out", directory / "feed", "--count", LAST + 1)
    assert done.returncode == 0, done.stderr
    (tmp_path / "elsewhere").mkdir()
    return directory


def write_config(path: Path, worker: str = "workers:TransactionExtractor", **reducer: Any) -> Path:
    """A config with relative paths only: the feed, the store, the sink's own file."""
    pipeline: dict[str, Any] = {"worker": worker}
    if reducer:
        pipeline["reducer"] = reducer
    data = {
        "source": {"feed": "feed", "follow": False},
        "progress": {"store": "sqlite:index.db"},
        "metrics": {"enabled": False},
        "pipelines": {"p": pipeline},
    }
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def rows(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(
            conn.execute("SELECT count(DISTINCT checkpoint) FROM transactions").fetchone()[0]
        )
    finally:
        conn.close()


SINK = {
    "class": "reducers:SqliteSink",
    "options": {
        "path": "rows.db",
        "table": "transactions",
        "columns": {
            "checkpoint": "BIGINT NOT NULL",
            "digest": "TEXT NOT NULL",
            "sender": "TEXT NOT NULL",
            "event_count": "INTEGER NOT NULL",
            "timestamp_ms": "BIGINT NOT NULL",
        },
    },
}


@pytest.mark.parametrize("how", ["relative", "absolute"])
def test_a_config_files_relative_paths_lead_beside_it(job: Path, how: str) -> None:
    elsewhere = job.parent / "elsewhere"
    config = write_config(job / "config.toml", **SINK)
    named = Path("../job/config.toml") if how == "relative" else config
    done = run_indexer("run", "-c", named, "--last-checkpoint", LAST, cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert saved_watermark(job / "index.db", "p") == LAST + 1
    assert rows(job / "rows.db") == LAST + 1  # the sink's `path` option too
    assert list(elsewhere.iterdir()) == []  # nothing made in the working directory

    shown = run_indexer("config", "show", "-c", named, cwd=elsewhere)
    assert shown.returncode == 0, shown.stderr
    data = tomllib.loads(shown.stdout)
    assert data["source"]["feed"] == str(named.parent / "feed")
    assert data["progress"]["store"] == f"sqlite:{named.parent / 'index.db'}"


def test_flags_and_variables_are_relative_to_the_working_directory(job: Path) -> None:
    elsewhere = job.parent / "elsewhere"
    config = write_config(job / "config.toml")
    done = run_indexer(
        "run", "-c", config, "--store", "sqlite:mine.db", "--last-checkpoint", LAST, cwd=elsewhere
    )
    assert done.returncode == 0, done.stderr
    assert saved_watermark(elsewhere / "mine.db", "p") == LAST + 1
    assert not (job / "mine.db").exists() and not (job / "index.db").exists()

    (elsewhere / "feed").symlink_to(job / "feed")
    program = Background.indexer(
        "run", "-c", config, "--last-checkpoint", LAST, cwd=elsewhere, env={"INDEXER_FEED": "feed"}
    )
    assert program.finish() == 0, program.describe()
    assert saved_watermark(job / "index.db", "p") == LAST + 1  # the file's store, the env's feed


def test_the_config_files_directory_is_on_the_import_path(job: Path) -> None:
    """``module:Class`` names a module beside the config file: no PYTHONPATH needed."""
    (job / "beside.py").write_text(
        textwrap.dedent(
            """
            from indexer import Reducer, Worker


            class Numbers(Worker):
                async def process_checkpoint(self, checkpoint):
                    return checkpoint.sequence_number


            class Total(Reducer):
                async def commit(self, batch):
                    print(f"total {sum(batch)}")
            """
        ),
        encoding="utf-8",
    )
    config = write_config(job / "config.toml", "beside:Numbers", **{"class": "beside:Total"})
    elsewhere = job.parent / "elsewhere"
    checked = run_indexer("config", "check", "-c", config, cwd=elsewhere)
    assert checked.returncode == 0, checked.stderr
    done = run_indexer("run", "-c", config, "--last-checkpoint", LAST, cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert f"total {sum(range(LAST + 1))}" in done.stdout.splitlines()

"""``indexer config check`` says OK only when a run could start: the feed directory is there
and readable, the store's file or directory is there, the databases answer. It prints one line
per check, then OK; or exits 2 with one error line naming the file and the key.

``config show`` and ``config check`` honour every ``INDEXER_*`` variable ``run`` does: they
show and check what ``run`` would run. Everything runs through the real binary."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
import tomli_w
from harness import Background

from indexer.cli import main

SINK = {
    "class": "reducers:SqliteSink",
    "options": {"table": "t", "columns": {"checkpoint": "BIGINT NOT NULL"}},
}


def write_config(path: Path, *, sink: bool = True, **tables: Any) -> Path:
    """A config with one pipeline (writing with an SQLite ``sink``) and the ``tables`` given
    (``source={...}``)."""
    pipeline: dict[str, Any] = {"worker": "workers:TransactionExtractor"}
    if sink:
        pipeline["reducer"] = SINK
    data: dict[str, Any] = {
        "source": {"feed": "feed"},
        "progress": {"store": "sqlite:index.db"},
        "pipelines": {"p": pipeline},
    }
    for name, table in tables.items():
        data[name] = {**data.get(name, {}), **table}
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def indexer(*args: Any, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``indexer ARGS`` in ``cwd`` to its end: exit code, stdout, stderr."""
    program = Background.indexer(*args, cwd=cwd, env=env)
    code = program.finish()
    return code, program.stdout_text, program.stderr_text


@pytest.fixture
def job(tmp_path: Path) -> Path:
    (tmp_path / "feed").mkdir()
    return tmp_path


def test_a_config_that_can_run_passes_every_check(job: Path) -> None:
    config = write_config(job / "config.toml")
    code, out, err = indexer("config", "check", "-c", "config.toml", cwd=job)
    assert (code, err) == (0, ""), err
    assert out.splitlines() == [
        "pipelines: p (imported and built)",
        "source.feed: feed (a readable directory)",
        "progress.store: sqlite:index.db (to be created)",
        "config.toml: OK (1 pipelines: p)",
    ]
    assert not (job / "index.db").exists()  # checking creates nothing
    assert config.exists()


@pytest.mark.parametrize(
    ("tables", "passed", "error"),
    [
        (
            {"source": {"feed": "missing"}},
            1,
            "config.toml: source.feed: directory 'missing' does not exist",
        ),
        (
            {"source": {"feed": "config.toml"}},
            1,
            "config.toml: source.feed: 'config.toml' is not a directory",
        ),
        (
            {"progress": {"store": "sqlite:nowhere/index.db"}},
            2,
            "config.toml: progress.store: directory 'nowhere' does not exist",
        ),
        (
            {"progress": {"store": "memory"}},
            0,
            "config.toml: pipelines.p.reducer: SqliteSink 't': no path is set and the progress "
            "store (MemoryProgressStore) is not SQLite; set path or use a SQLite store",
        ),
        (
            {"progress": {"store": "sqlite:gone/c.db"}, "scale": {"claims": "sqlite:gone/c.db"}},
            2,
            "config.toml: scale.claims: directory 'gone' does not exist",
        ),
    ],
    ids=["no-feed", "feed-not-a-directory", "no-store-directory", "sink-needs-sqlite", "claims"],
)
def test_a_config_that_cannot_run_fails_at_the_check_that_says_why(
    job: Path, tables: dict[str, Any], passed: int, error: str
) -> None:
    write_config(job / "config.toml", **tables)
    code, out, err = indexer("config", "check", "-c", "config.toml", cwd=job)
    assert code == 2, (out, err)
    assert err == f"indexer: error: {error}\n"
    assert len(out.splitlines()) == passed, out  # the checks that passed before it


def test_postgresql_is_connected_to_and_its_password_masked(job: Path, postgres_dsn: str) -> None:
    write_config(job / "config.toml", sink=False)
    store = postgres_dsn.replace("postgres@", "postgres:Pa55word@")
    assert "Pa55word" in store
    code, out, err = indexer("config", "check", "-c", "config.toml", "--store", store, cwd=job)
    assert (code, err) == (0, ""), err
    assert "progress.store: postgresql://postgres:***@" in out
    assert "(connected: PostgreSQL " in out

    unreachable = "postgresql://postgres:Pa55word@127.0.0.1:1/test"
    code, out, err = indexer(
        "config", "check", "-c", "config.toml", "--store", unreachable, cwd=job
    )
    assert code == 2, (out, err)
    assert err == (
        "indexer: error: config.toml: progress.store: cannot connect to "
        "postgresql://postgres:***@127.0.0.1:1/test: Connection refused\n"
    )
    assert "Pa55word" not in out + err


#: A value for every INDEXER_* variable of ``indexer run``, and the key it must set.
ENVIRONMENT: dict[str, tuple[str, str, Any]] = {
    "INDEXER_PIPELINE": ("p", "run.pipelines", ["p"]),
    "INDEXER_FIRST_CHECKPOINT": ("5", "run.first_checkpoint", 5),
    "INDEXER_LAST_CHECKPOINT": ("99", "run.last_checkpoint", 99),
    "INDEXER_FEED": ("other-feed", "source.feed", "other-feed"),
    "INDEXER_STORE": ("sqlite:claims.db", "progress.store", "sqlite:claims.db"),
    "INDEXER_METRICS_ADDRESS": ("127.0.0.1:9999", "metrics.address", "127.0.0.1:9999"),
    "INDEXER_METRICS": ("false", "metrics.enabled", False),
    "INDEXER_LOG_LEVEL": ("debug", "logging.level", "debug"),
    "INDEXER_LOG_FORMAT": ("json", "logging.format", "json"),
    "INDEXER_PROGRESS": ("false", "logging.progress", False),
    "INDEXER_PROCESSES": ("3", "scale.processes", 3),
    "INDEXER_CLAIMS": ("sqlite:claims.db", "scale.claims", "sqlite:claims.db"),
    "INDEXER_CHUNK_SIZE": ("500", "scale.chunk_size", 500),
    "INDEXER_EVENT_LOOP": ("asyncio", "run.event_loop", "asyncio"),
}


def _lookup(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        data = data[part]
    return data


def test_config_show_and_check_honour_every_variable_run_does(job: Path) -> None:
    run_command = main.commands["run"]
    run_variables = {
        param.envvar
        for param in run_command.params
        if isinstance(param, click.Option) and param.envvar != "INDEXER_CONFIG"
    }
    assert run_variables == set(ENVIRONMENT)  # a value below for each of them

    write_config(job / "config.toml")
    env = {name: value for name, (value, _, _) in ENVIRONMENT.items()}
    code, out, err = indexer("config", "show", "-c", "config.toml", cwd=job, env=env)
    assert (code, err) == (0, ""), err
    shown = tomllib.loads(out)
    for name, (_, key, expected) in ENVIRONMENT.items():
        assert _lookup(shown, key) == expected, (name, key)

    (job / "other-feed").mkdir()
    code, out, err = indexer("config", "check", "-c", "config.toml", cwd=job, env=env)
    assert (code, err) == (0, ""), err
    assert "source.feed: other-feed (a readable directory)" in out.splitlines()
    assert "scale.claims: sqlite:claims.db (to be created)" in out.splitlines()
    code, out, err = indexer(
        "config", "check", "-c", "config.toml", cwd=job, env={**env, "INDEXER_FEED": "nope"}
    )
    assert code == 2, (out, err)
    assert err == "indexer: error: config.toml: source.feed: directory 'nope' does not exist\n"

"""Building pipelines from the configuration: what a key set, or left out, gives the objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from indexer import Reducer
from indexer.cli.build import build_executor
from indexer.cli.config import load_config


class BigBatches(Reducer[Any]):
    """Limits as class attributes, as the Reducer docstring allows."""

    max_batch_size = 5000
    max_batch_age = 7.5

    async def commit(self, batch: list[Any]) -> None:
        pass


def _config(tmp_path: Path, reducer: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[progress]
store = "memory"

[pipelines.p]
worker = "workers:TransactionExtractor"
max_inflight = 10000

[pipelines.p.reducer]
{reducer}
"""
    )
    return path


def _reducer(path: Path) -> Reducer[Any]:
    (pool,) = build_executor(load_config(path), handle_signals=False).pools
    assert pool.reducer is not None
    return pool.reducer


def test_unset_limits_keep_the_reducer_class_attributes(tmp_path: Path) -> None:
    reducer = _reducer(_config(tmp_path, f'class = "{__name__}:BigBatches"'))
    assert (reducer.max_batch_size, reducer.max_batch_age) == (5000, 7.5)
    assert reducer.max_batch_bytes is None


def test_unset_limits_keep_what_the_options_gave_the_constructor(tmp_path: Path) -> None:
    options = "options = { max_batch_size = 7, max_batch_age = 0.25 }"
    reducer = _reducer(_config(tmp_path, f'class = "indexer.testing:RecordingReducer"\n{options}'))
    assert (reducer.max_batch_size, reducer.max_batch_age) == (7, 0.25)


def test_limits_set_in_the_table_override_the_class(tmp_path: Path) -> None:
    table = f'class = "{__name__}:BigBatches"\nmax_batch_size = 20\nmax_batch_bytes = 4096'
    reducer = _reducer(_config(tmp_path, table))
    assert (reducer.max_batch_size, reducer.max_batch_bytes, reducer.max_batch_age) == (
        20,
        4096,
        7.5,
    )


def test_a_reducer_without_limits_anywhere_has_the_reducer_defaults(tmp_path: Path) -> None:
    reducer = _reducer(_config(tmp_path, 'class = "indexer.testing:RecordingReducer"'))
    assert (reducer.max_batch_size, reducer.max_batch_bytes, reducer.max_batch_age) == (
        Reducer.max_batch_size,
        Reducer.max_batch_bytes,
        Reducer.max_batch_age,
    )


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ("max_batch_size = 0", "max_batch_size"),
        ("max_batch_age = -1.0", "max_batch_age"),
    ],
)
def test_bad_limits_name_the_key(tmp_path: Path, table: str, needle: str) -> None:
    from indexer import ConfigurationError

    path = _config(tmp_path, f'class = "{__name__}:BigBatches"\n{table}')
    with pytest.raises(ConfigurationError, match=f"pipelines.p.reducer.{needle}"):
        build_executor(load_config(path), handle_signals=False)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[pipelines.p]\nworker = "workers:TransactionExtractor"\nconcurrency = 0\n',
            "pipelines.p.concurrency must be at least 1, got 0",
        ),
        (
            '[pipelines.p]\nworker = "workers:TransactionExtractor"\nmax_inflight = 0\n',
            "pipelines.p.max_inflight must be at least 1, got 0",
        ),
        (
            '[pipelines.p]\nworker = "workers:TransactionExtractor"\n'
            "[pipelines.p.retry]\ninitial = -1.0\n",
            "pipelines.p.retry.initial must be >= 0, got -1.0",
        ),
        (
            '[pipelines.p]\nworker = "workers:TransactionExtractor"\n'
            '[pipelines.p.retry]\non_exhausted = "ignore"\n',
            "pipelines.p.retry.on_exhausted: invalid enum value 'ignore' (one of 'halt', 'skip')",
        ),
        (
            "[source]\npoll_interval = 0.0\n"
            '[pipelines.p]\nworker = "workers:TransactionExtractor"\n',
            "source.poll_interval must be > 0, got 0.0",
        ),
        (
            '[source]\nkind = "synthetic"\nbatch_size = 0\n'
            '[pipelines.p]\nworker = "workers:TransactionExtractor"\n',
            "source.batch_size must be >= 1, got 0",
        ),
        ("[scale]\nchunk_size = 0\n", "scale.chunk_size must be at least 1, got 0"),
        ("[scale]\nlease_ttl = 0.0\n", "scale.lease_ttl must be positive, got 0.0"),
        (
            "[metrics]\nready_max_lag_seconds = 0\n",
            "metrics.ready_max_lag_seconds must be positive, got 0.0",
        ),
        (
            "[run]\nfirst_checkpoint = 9\nlast_checkpoint = 5\n",
            "run.last_checkpoint (5) is below first_checkpoint (9)",
        ),
        (
            "[run]\nfirst_checkpoint = -1\n",
            "run.first_checkpoint must be a non-negative integer, got -1",
        ),
        (
            '[source]\nkind = "http"\n',
            "source.kind: invalid enum value 'http' (one of 'feed', 'local', 'synthetic')",
        ),
        (
            '[progress]\nstore = "mysql://u:pw@h/db"\n',
            "progress.store must be 'sqlite:PATH', 'file:PATH', 'memory' or a postgresql:// "
            "DSN, got 'mysql://u:***@h/db'",
        ),
    ],
    ids=[
        "concurrency",
        "max-inflight",
        "retry-initial",
        "retry-on-exhausted",
        "poll-interval",
        "synthetic-batch-size",
        "chunk-size",
        "lease-ttl",
        "ready-max-lag",
        "range",
        "negative-first",
        "source-kind",
        "store-spec",
    ],
)
def test_a_rule_is_reported_once_under_the_key_that_broke_it(
    tmp_path: Path, toml: str, message: str
) -> None:
    """Each rule lives in the object the key configures; the command names the file and the
    key, as ``indexer config check`` (which builds everything) reports it."""
    from click.testing import CliRunner

    from indexer.cli import main

    path = tmp_path / "bad.toml"
    memory = '[progress]\nstore = "memory"\n'
    path.write_text(toml if "[progress]" in toml else memory + toml)
    result = CliRunner().invoke(main, ["config", "check", "-c", str(path)])
    assert result.exit_code == 2, result.output
    assert result.stderr == f"indexer: error: {path}: {message}\n"


def test_the_same_rule_from_code_names_what_holds_the_setting() -> None:
    from indexer import ConfigurationError, RetryPolicy, WorkerPool
    from workers import TransactionExtractor

    with pytest.raises(ConfigurationError) as caught:
        WorkerPool(TransactionExtractor(), name="p", concurrency=0)
    assert str(caught.value) == "pipeline 'p': concurrency must be at least 1, got 0"
    with pytest.raises(ConfigurationError) as caught:
        RetryPolicy(initial=-1.0)
    assert str(caught.value) == "retry: initial must be >= 0, got -1.0"

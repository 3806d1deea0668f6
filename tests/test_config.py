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

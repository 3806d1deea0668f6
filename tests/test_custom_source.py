"""``source.class``: a user's ``CheckpointSource``, named in the config with its
``[source.options]``, gets the whole command; a bad one is one line naming the key."""

from __future__ import annotations

import sqlite3
import tomllib
from pathlib import Path
from typing import Any

import tomli_w
from harness import run_indexer

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"

#: A user's source, beside the config: synthetic checkpoints from ``first`` to ``last``.
MY_SOURCE = '''
from indexer.sources import CheckpointSource, SyntheticSource


class RangeSource(CheckpointSource):
    """Generated checkpoints first..last, in batches."""

    def __init__(self, first: int, last: int, seed: int = 0) -> None:
        self.last = last
        self.generator = SyntheticSource(seed=seed, count=last + 1)

    def stream(self, start, decoder):
        return self.generator.stream(start, decoder)

    async def latest_sequence_number(self):
        return self.last


class NotASource:
    pass
'''


def write_config(tmp_path: Path, **source: Any) -> Path:
    (tmp_path / "my_source.py").write_text(MY_SOURCE, encoding="utf-8")
    with EXAMPLE.open("rb") as file:
        data = tomllib.load(file)
    data["source"] = source
    data["progress"]["store"] = "sqlite:index.db"
    data["metrics"] = {"enabled": False}
    path = tmp_path / "config.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def test_a_custom_source_class_gets_the_whole_command(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, **{"class": "my_source:RangeSource", "options": {"first": 0, "last": 49}}
    )
    checked = run_indexer("config", "check", "-c", config, cwd=Path("/"))
    assert checked.returncode == 0, checked.stderr
    assert "source.class: my_source:RangeSource (imported and built)" in checked.stdout
    result = run_indexer("run", "-c", config, "--last-checkpoint", 49, cwd=Path("/"))
    assert result.returncode == 0, result.stderr
    conn = sqlite3.connect(tmp_path / "index.db")
    try:
        (rows, distinct, top) = conn.execute(
            "SELECT count(*), count(DISTINCT digest), max(checkpoint) FROM transactions"
        ).fetchone()
    finally:
        conn.close()
    assert rows == distinct > 0 and top == 49
    status = run_indexer("status", "-c", config, "--json", cwd=Path("/"))
    assert '"feed_latest": 49' in status.stdout


def test_a_bad_custom_source_is_one_line_naming_the_key(tmp_path: Path) -> None:
    cases = [
        ("my_source:Nope", {}, "source.class: 'my_source' has no attribute 'Nope'"),
        ("my_source:NotASource", {}, "is not a CheckpointSource subclass"),
        ("my_source:RangeSource", {"first": 0}, "source.class: bad options for RangeSource"),
    ]
    for cls, options, message in cases:
        config = write_config(tmp_path, **{"class": cls, "options": options})
        result = run_indexer("run", "-c", config)
        assert result.returncode == 2, result.stderr
        [line] = result.stderr.splitlines()
        assert line.startswith(f"indexer: error: {config}: source.class") and message in line

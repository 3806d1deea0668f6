"""``indexer init DIR``: write a new, runnable indexer project from templates.

The project holds a Worker that counts events by type, a Reducer that sums the counts in memory,
a config that runs them over a synthetic feed, and a test that passes as generated.
"""

from __future__ import annotations

import keyword
import re
import sys
from pathlib import Path
from string import Template

from ..errors import ConfigurationError

__all__ = ["project_name", "scaffold_project"]

#: The framework's distribution name, which the generated project depends on.
DISTRIBUTION = "checkpoint-indexer"

#: Names a generated package may not take: it would shadow the framework or the tests.
_RESERVED = frozenset({"indexer", "workers", "reducers", "tests", "test"})

_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "$name"
version = "0.1.0"
description = "An indexer built on the indexer framework"
requires-python = ">=3.11"
# The indexer framework (import package `indexer`); see README.md for installing it from a
# checkout or a path.
dependencies = ["$distribution"]

[project.optional-dependencies]
dev = ["pytest>=8", "pytest-asyncio>=0.24"]

[tool.setuptools.packages.find]
include = ["$name", "$name.*"]

[tool.pytest.ini_options]
asyncio_mode = "auto"
asyncio_default_fixture_loop_scope = "function"
testpaths = ["tests"]
pythonpath = ["."]

[tool.ruff]
line-length = 100
"""

_INIT = '''\
"""The $name indexer: worker.py, reducer.py, run by config.toml."""
'''

_WORKER = '''\
"""The $name worker: turns each checkpoint into one message.

A starting point: change ``process_checkpoint`` to extract what your index needs.
"""

from __future__ import annotations

from collections import Counter

from indexer import Checkpoint, Worker


class EventCounter(Worker[Checkpoint, dict[str, int]]):
    """Counts the events of each checkpoint by type, e.g. ``{"dex::Swap": 3}``.

    Replace the body of ``process_checkpoint`` with your own extraction: its return value is
    handed to the reducer (reducer.py), in checkpoint order. Calls run concurrently.
    """

    name = "$name"

    async def process_checkpoint(self, checkpoint: Checkpoint) -> dict[str, int]:
        counts = Counter(event.type for tx in checkpoint.transactions for event in tx.events)
        return dict(counts)
'''

_REDUCER = '''\
"""The $name reducer: commits the worker's messages in batches.

Messages arrive in checkpoint order. A starting point: it only keeps a running total in
memory. Change ``commit`` to write each batch somewhere durable (a table, a file) and make
those writes idempotent: after a crash the last batch may be committed again.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from indexer import Reducer


class EventTotals(Reducer[dict[str, int]]):
    """Sums the per-checkpoint counts into ``totals`` (in memory: lost when the process ends)."""

    def __init__(self, **limits: Any) -> None:
        super().__init__(**limits)
        self.totals: Counter[str] = Counter()
        self.checkpoints = 0

    async def commit(self, batch: list[dict[str, int]]) -> None:
        for counts in batch:
            self.totals.update(counts)
        self.checkpoints += len(batch)
'''

_CONFIG = """\
# The $name indexer. Run it with `indexer run -c config.toml` from this directory.

[source]
# A generated feed, so the project runs as is: 1000 reproducible checkpoints, then stop.
kind = "synthetic"
seed = 1
count = 1000
# To index a local feed of {sequence_number}.chk files instead, replace the three lines
# above with:
# kind = "local"
# feed = "path/to/feed"

[progress]
# Where the watermark is saved; the next run resumes from it. Delete the file to start over.
store = "sqlite:$name.db"

[pipelines.$name]
worker = "$name.worker:EventCounter"
concurrency = 4          # checkpoints processed at once

[pipelines.$name.reducer]
class = "$name.reducer:EventTotals"
max_batch_size = 100     # commit every 100 checkpoints ...
max_batch_age = 1.0      # ... or 1 s after the first message of a batch
"""

_TEST = '''\
"""Tests of the $name worker and reducer: run them with `pytest`."""

from collections import Counter

from indexer.sources import SyntheticSource
from indexer.testing import make_checkpoints, run_worker

from $name.reducer import EventTotals
from $name.worker import EventCounter


async def test_counts_events_by_type() -> None:
    # make_checkpoints gives every transaction one "test::Event".
    result = await run_worker(EventCounter(), make_checkpoints(10, transactions=3), concurrency=4)
    assert result.watermark == 10
    assert result.messages == [{"test::Event": 3}] * 10


async def test_totals_over_synthetic_checkpoints() -> None:
    source = SyntheticSource(seed=1)
    checkpoints = [source.checkpoint_at(n) for n in range(50)]
    expected = Counter(
        event.type for cp in checkpoints for tx in cp.transactions for event in tx.events
    )
    reducer = EventTotals(max_batch_size=10)
    result = await run_worker(EventCounter(), checkpoints, reducer=reducer, concurrency=4)
    assert result.watermark == 50
    assert reducer.checkpoints == 50
    assert reducer.totals == expected
'''

_README = """\
# $name

An indexer built on the `indexer` framework: `$name/worker.py` counts the events of each
checkpoint by type and `$name/reducer.py` sums the counts. Both are starting points to edit.

Install (in a virtualenv, with Python 3.11+): first the framework, the distribution
`$distribution`, from its checkout or any path to it, then this project:

    pip install /path/to/checkpoint-indexer-checkout
    pip install -e '.[dev]'

Test:

    pytest

Run (over 1000 synthetic checkpoints; see `config.toml` to index a local feed):

    indexer run -c config.toml

Progress is saved in `$name.db`: run it again and it resumes; delete the file to start over.
"""

_GITIGNORE = """\
*.db
*.db-shm
*.db-wal
.venv/
__pycache__/
"""

#: Relative path (a template itself) -> contents template.
_FILES: dict[str, str] = {
    "pyproject.toml": _PYPROJECT,
    "$name/__init__.py": _INIT,
    "$name/worker.py": _WORKER,
    "$name/reducer.py": _REDUCER,
    "config.toml": _CONFIG,
    "tests/test_worker.py": _TEST,
    "README.md": _README,
    ".gitignore": _GITIGNORE,
}


def project_name(raw: str) -> str:
    """``raw`` as a package name: lowercase, each non-alphanumeric character ``_``, ``x_`` in
    front of a leading digit. Raises ConfigurationError for a name that cannot be used."""
    name = re.sub(r"[^a-z0-9]", "_", raw.strip().lower())
    if name[:1].isdigit():
        name = f"x_{name}"
    if not name.strip("_"):
        raise ConfigurationError(f"cannot make a project name from {raw!r}")
    if keyword.iskeyword(name):
        name = f"{name}_"
    if name in _RESERVED or name in sys.stdlib_module_names:
        raise ConfigurationError(
            f"project name {name!r} would shadow an existing module; choose another name"
        )
    return name


def scaffold_project(directory: Path, name: str | None = None) -> list[Path]:
    """Write a new indexer project into ``directory`` (created if missing; refused if it exists
    and is not empty) and return the files written. ``name`` (default: the directory's name) is
    normalised by ``project_name`` and names the package, the pipeline and the database."""
    directory = Path(directory)
    if directory.exists():
        if not directory.is_dir():
            raise ConfigurationError(f"{directory}: exists and is not a directory")
        if any(directory.iterdir()):
            raise ConfigurationError(f"{directory}: directory is not empty")
    package = project_name(name if name is not None else directory.resolve().name)
    written: list[Path] = []
    for relative, template in _FILES.items():
        path = directory / Template(relative).substitute(name=package)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = Template(template).substitute(name=package, distribution=DISTRIBUTION)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written

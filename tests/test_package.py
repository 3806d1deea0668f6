"""The package as users import it: a short public surface that loads what it uses only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import indexer

_HEAVY = ("asyncpg", "aiosqlite", "structlog", "prometheus_client", "rich", "click", "uvloop")


def _modules_after(statement: str) -> set[str]:
    program = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(done.stdout))


def test_import_indexer_loads_no_driver_claim_store_or_command_layer() -> None:
    loaded = _modules_after("import indexer")
    assert not {m for m in loaded if m.split(".")[0] in _HEAVY}
    assert not {m for m in loaded if m.startswith(("indexer.claims", "indexer.cli"))}


def test_the_engine_loads_no_database_driver_until_a_database_store_is_named() -> None:
    loaded = _modules_after("from indexer import IndexerExecutor, Worker, WorkerPool, Reducer")
    assert "indexer.executor" in loaded
    assert not {m for m in loaded if m.split(".")[0] in _HEAVY}
    assert "aiosqlite" in _modules_after("from indexer.progress import SqliteProgressStore")


def test_the_command_help_loads_neither_the_engine_nor_an_event_loop() -> None:
    loaded = _modules_after("from indexer.cli import main")
    assert "indexer.executor" not in loaded and "asyncio" not in loaded


def test_every_public_name_resolves() -> None:
    for name in indexer.__all__:
        assert getattr(indexer, name) is not None
    assert set(indexer.__all__) <= set(dir(indexer))


def test_the_package_is_marked_typed() -> None:
    assert (Path(indexer.__file__).parent / "py.typed").is_file()

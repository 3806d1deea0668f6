"""The ``indexer`` command's start-up: a run imports only what it uses.

Which modules load is checked, never how long they take (the machine is shared). A run is
``python -m indexer`` (as runpy does it) under ``-X importtime``, with the modules it holds at
exit written to a file as well: a module imported with ``importlib.import_module`` (a package's
names loaded on first use, the config's ``module:Class`` strings) prints no importtime line,
and a refused import (structlog trying rich while JSON lines hide it) prints one.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from indexer.sources import SyntheticSource, write_feed

#: Runs the command as ``python -m indexer`` does, and writes ``sorted(sys.modules)`` at exit
#: to the file named by its first argument.
_RUN_AS_MAIN = textwrap.dedent(
    """
    import atexit, json, runpy, sys
    out = sys.argv.pop(1)
    atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
    sys.argv[0] = "indexer"
    runpy.run_module("indexer", run_name="__main__", alter_sys=True)
    """
)

_IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(?P<name>\S+)\s*$")

#: What a run of the SQLite job below never needs: the PostgreSQL driver and sink, the
#: metrics server (disabled), rich (JSON lines), scale-out, the other commands, the sinks
#: and workers it does not name, and the remote feeds' sources and clients.
_NOT_NEEDED = (
    "asyncpg",
    "aiohttp",
    "obstore",
    "indexer.sources.http",
    "indexer.sources.object_store",
    "prometheus_client",
    "indexer.metrics",
    "rich",
    "indexer.chunked",
    "indexer.cli.bench",
    "indexer.cli.commands",
    "indexer.cli.status",
    "indexer.cli.scaffold",
    "indexer.claims.postgres",
    "indexer.progress.postgres",
    "indexer.progress.file",
    "reducers.postgres",
    "reducers.archive",
    "reducers.jsonl",
    "zstandard",
    "workers.archiver",
    "matplotlib",
)


def _job(directory: Path, *, metrics: bool = False) -> Path:
    asyncio.run(write_feed(SyntheticSource(seed=1), directory / "feed", count=3))
    job = directory / "job.toml"
    job.write_text(
        textwrap.dedent(
            f"""
            [source]
            feed = "feed"
            follow = false
            [progress]
            store = "sqlite:run.db"
            [metrics]
            enabled = {str(metrics).lower()}
            address = "127.0.0.1:0"
            [logging]
            progress = false
            level = "warning"
            format = "json"
            [pipelines.transactions]
            worker = "workers:TransactionExtractor"
            [pipelines.transactions.reducer]
            class = "reducers:SqliteSink"
            max_batch_size = 500
            [pipelines.transactions.reducer.options]
            table = "transactions"
            columns = {{ checkpoint = "BIGINT NOT NULL", digest = "TEXT NOT NULL", \
sender = "TEXT NOT NULL", event_count = "INTEGER NOT NULL", timestamp_ms = "BIGINT NOT NULL" }}
            """
        )
    )
    return job


def _run(directory: Path, *args: str) -> tuple[set[str], set[str]]:
    """Run ``indexer run -c job.toml --last-checkpoint 2 ARGS`` in ``directory``; the modules
    with an importtime line, and those held at exit."""
    held = directory / "modules.json"
    command = ["run", "-c", "job.toml", "--last-checkpoint", "2", *args]
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", _RUN_AS_MAIN, str(held), *command],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("processed 3 checkpoints"), done.stdout
    lines = {m["name"] for line in done.stderr.splitlines() if (m := _IMPORT_LINE.match(line))}
    return lines, set(json.loads(held.read_text()))


def _among(modules: set[str], names: tuple[str, ...]) -> set[str]:
    """The ``modules`` that are one of ``names`` or inside one of them."""
    return {m for m in modules if any(m == n or m.startswith(f"{n}.") for n in names)}


def test_a_sqlite_run_with_json_logs_imports_nothing_it_does_not_use(tmp_path: Path) -> None:
    _job(tmp_path)
    lines, held = _run(tmp_path)
    assert {"indexer.executor", "structlog", "aiosqlite", "uvloop"} <= lines
    assert {"workers.transactions", "reducers.sqlite", "indexer.progress.sqlite"} <= held
    # structlog tried rich (its import refused: one line), never got it.
    assert _among(lines, _NOT_NEEDED) <= {"rich"}
    assert not _among(held, _NOT_NEEDED)
    # structlog.dev itself comes with structlog (its package imports it); without rich it is
    # a few milliseconds.


def test_with_metrics_prometheus_client_is_imported_and_still_no_driver(tmp_path: Path) -> None:
    _job(tmp_path, metrics=True)
    lines, held = _run(tmp_path)
    assert "prometheus_client" in lines and "indexer.metrics" in held
    not_needed = tuple(n for n in _NOT_NEEDED if n not in ("prometheus_client", "indexer.metrics"))
    assert not _among(held, not_needed)


def test_console_logs_off_a_terminal_need_no_rich(tmp_path: Path) -> None:
    _job(tmp_path)
    _, held = _run(tmp_path, "--log-format", "console")
    assert "structlog" in held and not _among(held, ("rich",))


def test_console_logs_on_a_terminal_draw_tracebacks_with_rich_after_json_ones() -> None:
    """JSON lines import structlog without rich; a console on a terminal configured later in
    the same process still gets rich's tracebacks."""
    program = textwrap.dedent(
        """
        import io, sys
        from indexer.cli.logs import configure_logging

        configure_logging("info", "json", io.StringIO())
        assert "rich" not in sys.modules

        class Terminal(io.StringIO):
            def isatty(self):
                return True

        out = Terminal()
        configure_logging("info", "console", out)
        import structlog
        try:
            1 / 0
        except ZeroDivisionError:
            structlog.get_logger().error("boom", exc_info=True)
        print(out.getvalue())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "boom" in done.stdout and "ZeroDivisionError" in done.stdout
    assert "Traceback" in done.stdout and "╭" in done.stdout  # rich's box


def test_help_lists_every_command_with_its_short_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "indexer", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    listed = done.stdout.partition("Commands:\n")[2].splitlines()
    helps = dict(line.split(maxsplit=1) for line in listed if line.strip())
    expected = ["bench", "config", "generate", "init", "reset", "run", "status"]
    assert sorted(helps) == expected
    assert helps["bench"].startswith("Measure throughput and memory")
    assert helps["run"].startswith("Run the configured pipelines")
    assert helps["status"].startswith("Per pipeline: watermark")
    assert helps["config"].startswith("Show or check the effective configuration")
    assert all(helps.values())


def test_the_command_group_names_every_command_and_loads_each_once() -> None:
    import click

    from indexer.cli import main

    ctx = click.Context(main)
    names = main.list_commands(ctx)
    assert names == ["bench", "config", "generate", "init", "reset", "run", "status"]
    for name in names:
        command = main.get_command(ctx, name)
        assert command is not None and command.name == name
        assert main.get_command(ctx, name) is command
        if not isinstance(command, click.Group):  # one-line errors, bench's too
            assert getattr(command.callback, "handles_errors", False), name


def _modules_after(statement: str) -> set[str]:
    program = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(done.stdout))


@pytest.mark.parametrize(
    ("statement", "loaded", "not_loaded"),
    [
        ("import workers, reducers", set(), {"workers.archiver", "reducers.postgres", "asyncpg"}),
        (
            "from workers import TransactionExtractor",
            {"workers.transactions"},
            {"reducers", "workers.archiver", "zstandard"},
        ),
        (
            "from reducers import SqliteSink",
            {"reducers.sqlite"},
            {"reducers.postgres", "asyncpg", "reducers.archive", "zstandard"},
        ),
        ("from reducers import PostgresSink", {"reducers.postgres", "asyncpg"}, set()),
        ("import indexer.cli.config", set(), {"indexer.chunked", "prometheus_client"}),
    ],
)
def test_the_ready_made_workers_and_sinks_load_on_first_use(
    statement: str, loaded: set[str], not_loaded: set[str]
) -> None:
    modules = _modules_after(statement)
    assert loaded <= modules
    assert not (not_loaded & modules)


def test_every_ready_made_name_resolves() -> None:
    import reducers
    import workers

    for package in (reducers, workers):
        for name in package.__all__:
            assert getattr(package, name) is not None, name
        assert set(package.__all__) <= set(dir(package))


def test_a_name_whose_module_fails_to_import_is_a_configuration_error(tmp_path: Path) -> None:
    from indexer.cli.config import import_object
    from indexer.errors import ConfigurationError

    package = tmp_path / "lazypkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from indexer._lazy import lazy_attributes\n"
        "__getattr__ = lazy_attributes(__name__, {'Sink': '.sink'})\n"
    )
    (package / "sink.py").write_text("import a_module_that_is_not_installed\n")
    with pytest.raises(ConfigurationError, match=r"cannot import 'lazypkg'.*a_module_that_is_not"):
        import_object("lazypkg:Sink", "job.toml: pipelines.p.reducer.class", tmp_path)
    with pytest.raises(ConfigurationError, match="'lazypkg' has no attribute 'Nope'"):
        import_object("lazypkg:Nope", "job.toml: pipelines.p.reducer.class", tmp_path)


def test_the_lease_default_is_the_chunked_runners_too() -> None:
    """``scale.lease_ttl`` reads its default off the executor, so that the config need not
    import the chunked runner; both take the same lease."""
    from indexer.chunked import ChunkedRunner
    from indexer.cli.config import ScaleConfig

    default = inspect.signature(ChunkedRunner).parameters["lease_ttl"].default
    assert ScaleConfig().lease_ttl == default

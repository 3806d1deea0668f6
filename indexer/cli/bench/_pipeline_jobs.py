"""What the pipeline scenarios run: ``indexer run`` and the bare loop (``_bare_pipeline``) as
subprocesses timed from start to exit, each over the same job on a fresh database (a new
SQLite file, or a new PostgreSQL schema dropped after the run), its rows counted."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from ._bare_pipeline import BATCH, COLUMNS, DSN_VARIABLE, TABLE
from ._common import templates

__all__ = ["CHUNKS", "CONCURRENCY", "SCHEMA_PREFIX", "Backend", "PostgresJob", "Run", "SqliteJob"]

BARE = Path(__file__).with_name("_bare_pipeline.py")
#: Every schema the PostgreSQL scenarios create starts with this (and is dropped).
SCHEMA_PREFIX = "indexer_bench_pipeline_"
CONCURRENCY = 16
CHUNKS = 16  # chunks of the range in the --processes 2 runs
_KIB = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux


class Run(NamedTuple):
    seconds: float
    peak_mb: float  # the largest of the processes' own peaks
    rows: int


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without INDEXER_* variables, which would override the config file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INDEXER_")}
    return {**env, **(extra or {})}


#: Runs a command and reports its own wall clock and peak RSS. The launcher is needed: a child
#: of this process would report this process's peak too (Linux keeps ``ru_maxrss`` across
#: ``exec``, and a forked child starts with its parent's), so a small interpreter spawns it.
_LAUNCHER = """
import os, sys, time
started = time.monotonic()
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
ended = time.monotonic()
with open(sys.argv[1], "w") as report:
    report.write(f"{started} {ended} {usage.ru_maxrss}")
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def timed(commands: list[list[str]], env: dict[str, str], what: str) -> tuple[float, float]:
    """Run ``commands`` at once: the wall seconds from the first start to the last exit
    (interpreter start-up included) and the largest peak RSS (MB) of one of them."""
    with tempfile.TemporaryDirectory(prefix="indexer-bench-") as tmp:
        files = [(Path(tmp) / f"{i}.report", Path(tmp) / f"{i}.err") for i in range(len(commands))]
        processes: list[subprocess.Popen[bytes]] = []
        try:
            for command, (report, error) in zip(commands, files, strict=True):
                launch = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(report), *command]
                with error.open("wb") as stderr:  # the child keeps its own copy
                    processes.append(
                        subprocess.Popen(
                            launch,
                            stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL,
                            stderr=stderr,
                            env=env,
                            start_new_session=True,  # its own group, to stop it whole
                        )
                    )
            for process in processes:
                process.wait()
        finally:
            for process in processes:
                if process.returncode is None:  # interrupted: leave nothing running
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        for process, (_, error) in zip(processes, files, strict=True):
            if process.returncode:
                tail = error.read_text(errors="replace").strip()[-800:]
                raise RuntimeError(f"{what} exited {process.returncode}: {tail}")
        reports = [[float(x) for x in report.read_text().split()] for report, _ in files]
    seconds = max(end for _, end, _ in reports) - min(start for start, _, _ in reports)
    return seconds, max(kib for _, _, kib in reports) * _KIB / 2**20


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)  # strings, numbers and booleans are written alike


def write_config(
    path: Path, feed: Path, progress: dict[str, Any], sink: str, options: dict[str, Any]
) -> Path:
    lines = ["[source]", f"feed = {_toml(str(feed))}", "follow = false", "", "[progress]"]
    lines += [f"{key} = {_toml(value)}" for key, value in progress.items()]
    lines += ["", "[metrics]", "enabled = false", "", "[pipelines.transactions]"]
    lines += ['worker = "workers:TransactionExtractor"', f"concurrency = {CONCURRENCY}", ""]
    lines += ["[pipelines.transactions.reducer]", f"class = {_toml(sink)}"]
    lines += [f"max_batch_size = {BATCH}", "max_batch_age = 60.0", ""]
    lines += ["[pipelines.transactions.reducer.options]", f"table = {_toml(TABLE)}"]
    lines += [f"columns = {_toml(COLUMNS)}"]
    lines += [f"{key} = {_toml(value)}" for key, value in options.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class Job:
    """The job over ``count`` checkpoints of ``feed``, run by either side on a fresh database."""

    def __init__(self, directory: Path, feed: Path, count: int, event_loop: str) -> None:
        self.directory, self.feed, self.count, self.event_loop = directory, feed, count, event_loop
        self.fresh = itertools.count()
        base = templates()
        self.expected = sum(len(base[n % len(base)].transactions) for n in range(count))

    def indexer_command(self, config: Path, processes: int) -> list[str]:
        command = [sys.executable, "-m", "indexer", "run", "-c", str(config)]
        command += ["--last-checkpoint", str(self.count - 1), "--processes", str(processes)]
        if processes > 1:
            command += ["--chunk-size", str(max(1, self.count // CHUNKS))]
        command += ["--no-progress", "--no-metrics", "--log-level", "warning"]
        return [*command, "--event-loop", self.event_loop]

    def bare_commands(self, kind: str, target: str, loops: int) -> list[list[str]]:
        """One bare loop over the whole range, or ``loops`` over its parts at once."""
        bounds = [self.count * i // loops for i in range(loops + 1)]
        return [
            [sys.executable, "-P", str(BARE), kind, target, str(self.feed), str(start), str(stop)]
            + ([self.event_loop] if kind == "postgres" else [])
            for start, stop in itertools.pairwise(bounds)
        ]

    def checked(self, seconds: float, peak: float, rows: int, what: str) -> Run:
        if rows != self.expected:  # a wrong count is a broken run, not a figure
            raise RuntimeError(f"{what} wrote {rows} rows, expected {self.expected}")
        return Run(seconds, peak, rows)


class Backend(Protocol):
    def indexer(self, processes: int) -> Run: ...
    def bare(self, loops: int) -> Run: ...


class SqliteJob(Job):
    def _database(self, side: str) -> Path:
        return self.directory / f"{side}-{next(self.fresh)}.db"

    def _rows_then_remove(self, db: Path) -> int:
        try:
            with sqlite3.connect(db) as conn:
                return int(conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0])
        finally:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)

    def indexer(self, processes: int) -> Run:
        db = self._database("indexer")
        config = write_config(
            db.with_suffix(".toml"), self.feed, {"store": f"sqlite:{db}"}, "reducers:SqliteSink", {}
        )
        seconds, peak = timed([self.indexer_command(config, processes)], _child_env(), "indexer")
        return self.checked(seconds, peak, self._rows_then_remove(db), f"indexer ({processes})")

    def bare(self, loops: int) -> Run:
        db = self._database("bare")
        commands = self.bare_commands("sqlite", str(db), loops)
        seconds, peak = timed(commands, _child_env(), "bare loop")
        return self.checked(seconds, peak, self._rows_then_remove(db), f"bare loop ({loops})")


class PostgresJob(Job):
    """Each run in a schema of its own, dropped after it (and all of them again at the end)."""

    def __init__(
        self, runner: asyncio.Runner, dsn: str, directory: Path, feed: Path, count: int, loop: str
    ) -> None:
        super().__init__(directory, feed, count, loop)
        import asyncpg

        self.runner, self.dsn, self.made = runner, dsn, set[str]()
        self.admin = runner.run(asyncpg.connect(dsn))

    def _sql(self, query: str) -> Any:
        return self.runner.run(self.admin.fetchval(query))

    @contextlib.contextmanager
    def _schema(self) -> Iterator[str]:
        schema = f"{SCHEMA_PREFIX}{uuid.uuid4().hex[:12]}"
        self.made.add(schema)
        self._sql(f'CREATE SCHEMA "{schema}"')
        try:
            yield schema
        finally:
            self._sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    def _rows(self, schema: str) -> int:
        return int(self._sql(f'SELECT count(*) FROM "{schema}".{TABLE}'))

    def indexer(self, processes: int) -> Run:
        with self._schema() as schema:
            path = self.directory / f"indexer-{next(self.fresh)}.toml"
            progress = {"store": self.dsn, "schema": schema}
            sink = "reducers:PostgresSink"
            config = write_config(path, self.feed, progress, sink, {"schema": schema})
            command = self.indexer_command(config, processes)
            try:
                seconds, peak = timed([command], _child_env(), "indexer")
            finally:
                path.unlink()  # it holds the DSN
            return self.checked(seconds, peak, self._rows(schema), f"indexer ({processes})")

    def bare(self, loops: int) -> Run:
        with self._schema() as schema:
            commands = self.bare_commands("postgres", schema, loops)
            seconds, peak = timed(commands, _child_env({DSN_VARIABLE: self.dsn}), "bare loop")
            return self.checked(seconds, peak, self._rows(schema), f"bare loop ({loops})")

    def close(self) -> None:
        try:
            for schema in self.made:
                self._sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            self.runner.run(self.admin.close())

"""One way for a test to run a program in the background: the real ``indexer`` command, or a
program of ``tests/programs``. Its output is read by threads as it comes and kept in memory;
a test waits for a condition (a line, a log event, a state of the files), never for a guessed
time, and every program still running when a test ends is killed (``conftest.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from signal import SIGTERM
from typing import IO, Any, TypeVar

import pytest

T = TypeVar("T")

#: The ``indexer`` command of the environment the tests run in.
INDEXER = Path(sys.executable).with_name("indexer")
#: Programs and workers the tests run (``slow_workers``, ``feed_indexer.py``).
PROGRAMS = Path(__file__).resolve().parent / "programs"
#: The columns of ``workers.TransactionExtractor``'s rows, as a SqliteSink's TOML option.
TRANSACTION_COLUMNS = (
    '{ checkpoint = "BIGINT", digest = "TEXT", sender = "TEXT", event_count = "BIGINT", '
    'timestamp_ms = "BIGINT" }'
)
#: The same columns as a dict, for configs written with tomli_w.
TRANSACTION_COLUMN_TYPES = {
    "checkpoint": "BIGINT",
    "digest": "TEXT",
    "sender": "TEXT",
    "event_count": "BIGINT",
    "timestamp_ms": "BIGINT",
}
#: A generous wait for a loaded 2-core machine: the asserted behaviour stays exact.
TIMEOUT = 30.0

_started: list[Background] = []


def command_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without ``INDEXER_*`` variables (they would override the
    tests' configs), with ``tests/programs`` on ``PYTHONPATH``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INDEXER_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROGRAMS), env.get("PYTHONPATH")]))
    return {**env, **(extra or {})}


def run_indexer(
    *args: Any, cwd: Path | None = None, timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """``indexer ARGS`` to completion, its output captured."""
    return subprocess.run(
        [str(INDEXER), *map(str, args)],
        cwd=cwd,
        env=command_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def saved_watermark(db: Path, pipeline: str) -> int | None:
    """The watermark a program saved in the SQLite store ``db``, or None (no file, table or
    row yet); read-only, so that looking never creates the database."""
    if not db.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=TIMEOUT)
        try:
            row = conn.execute(
                "SELECT next_checkpoint FROM indexer_watermarks WHERE pipeline = ?", (pipeline,)
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.OperationalError:  # the program is creating it
        return None
    return None if row is None else int(row[0])


def eventually(what: str, condition: Callable[[], T], timeout: float = TIMEOUT) -> T:
    """Poll ``condition`` until it returns something truthy, and return that; fail after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout}s")
        time.sleep(0.01)
    return value


def parse_events(lines: Sequence[str]) -> list[dict[str, Any]]:
    """Every line as a JSON log record with an ``event``; a line that is not one fails."""
    events = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON log line: {line!r}")
        assert isinstance(record, dict) and "event" in record, line
        events.append(record)
    return events


class Background:
    """A program running in the background; ``stdout`` and ``stderr`` hold its lines so far."""

    def __init__(
        self, args: Sequence[Any], *, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.args = [str(arg) for arg in args]
        self.proc = subprocess.Popen(
            self.args,
            cwd=cwd,
            env=env if env is not None else command_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _started.append(self)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr))
        ]
        for reader in self._readers:
            reader.start()

    @classmethod
    def indexer(
        cls, *args: Any, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> Background:
        """``indexer ARGS``; ``env`` adds to ``command_env()``."""
        return cls([INDEXER, *args], cwd=cwd, env=command_env(env))

    @classmethod
    def program(cls, name: str, *args: Any, cwd: Path | None = None) -> Background:
        """``python tests/programs/NAME ARGS``."""
        return cls([sys.executable, PROGRAMS / name, *args], cwd=cwd)

    @staticmethod
    def _read(stream: IO[str], lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    # -- looking ---------------------------------------------------------------------------

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    @property
    def stdout_text(self) -> str:
        return "".join(f"{line}\n" for line in self.stdout)

    @property
    def stderr_text(self) -> str:
        return "".join(f"{line}\n" for line in self.stderr)

    def events(self) -> list[dict[str, Any]]:
        """Every stderr line so far as a JSON log record (each line must be one)."""
        return parse_events(list(self.stderr))

    def events_named(self, event: str) -> list[dict[str, Any]]:
        return [record for record in self.events() if record["event"] == event]

    def describe(self) -> str:
        return (
            f"{' '.join(self.args[:4])} ... exit {self.proc.poll()}\n"
            f"stdout: {self.stdout[-20:]}\nstderr: {self.stderr[-20:]}"
        )

    # -- waiting ---------------------------------------------------------------------------

    def wait_until(self, what: str, condition: Callable[[], T], timeout: float = TIMEOUT) -> T:
        """Poll ``condition`` until it returns something truthy, and return that; fail if the
        program ends first or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if self.proc.poll() is not None:
                self._join()
                value = condition()  # its last lines may be what was waited for
                if value:
                    return value
                pytest.fail(f"the program ended before {what}\n{self.describe()}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"no {what} within {timeout}s\n{self.describe()}")
            time.sleep(0.01)

    def wait_for_line(self, line: str, timeout: float = TIMEOUT) -> None:
        """Wait until stdout prints ``line``."""
        self.wait_until(f"stdout line {line!r}", lambda: line in self.stdout, timeout)

    def wait_for_event(self, event: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """Wait until the program logs ``event`` (a JSON line on stderr); that record."""

        def logged() -> dict[str, Any] | None:
            found = [r for r in parse_events(_json_lines(self.stderr)) if r["event"] == event]
            return found[0] if found else None

        return self.wait_until(f"log event {event!r}", logged, timeout)

    # -- ending ----------------------------------------------------------------------------

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._join()

    def finish(self, timeout: float = TIMEOUT) -> int:
        """Wait for the exit and for all of its output; its exit code. Killed and failed
        after ``timeout``."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"still running {timeout}s later\n{self.describe()}")
        self._join()
        return self.proc.returncode

    def stop(self, signum: int = SIGTERM, timeout: float = TIMEOUT) -> int:
        """Send ``signum`` and ``finish``."""
        self.signal(signum)
        return self.finish(timeout)

    def _join(self) -> None:
        for reader in self._readers:
            reader.join(timeout=5)


def _json_lines(lines: list[str]) -> list[str]:
    """The lines that are JSON objects (a program may print others before it logs)."""
    return [line for line in list(lines) if line.startswith("{")]


def kill_leftovers() -> None:
    """Kill every program a test started and left running."""
    while _started:
        _started.pop().kill()


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prometheus_binary(name: str) -> str:
    """A binary of the Debian package prometheus (``promtool``, ``prometheus``): a test that
    needs it skips without it, and fails in CI, which installs it."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed (Debian: apt-get install prometheus)")
        pytest.skip(f"{name} is not installed (Debian: apt-get install prometheus)")
    return path


def promtool() -> str:
    """The ``promtool`` binary (``prometheus_binary``)."""
    return prometheus_binary("promtool")


def check_metrics_with_promtool(text: str) -> None:
    """``promtool check metrics`` passes on an exposition ``text``."""
    check = subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr

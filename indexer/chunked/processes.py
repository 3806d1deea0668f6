"""``indexer run --processes N``: N worker processes on one machine sharing one claim store.

The parent is worker 0: it writes the effective config to a private file, starts N-1 children
(``indexer run`` with ``--processes 1`` and the claim store set), each in its own session so
that a Ctrl+C on the terminal reaches only the parent, runs its own share of the job, and
forwards each stop signal it gets to every child. A child that dies is not restarted: the
others take its chunk over when its lease expires.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import structlog

from ..config import Config, parse_address

log = structlog.get_logger("indexer")

__all__ = ["run_processes"]


def _config_file(config: Config, directory: str) -> Path:
    data = _without_none(msgspec.to_builtins(config))
    data.pop("path", None)
    path = Path(directory) / "config.toml"
    path.write_bytes(msgspec.toml.encode(data))
    return path


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def child_command(config: Config, config_file: Path, index: int) -> list[str]:
    """The command line of child ``index``: one process, chunked, its own metrics port."""
    command = [
        sys.executable,
        "-m",
        "indexer",
        "run",
        "-c",
        str(config_file),
        "--processes",
        "1",
        "--claims",
        config.scale.claims or config.progress.store,
        "--no-progress",
    ]
    if config.metrics.enabled:
        host, port = parse_address(config.metrics.address, "metrics.address")
        command += ["--metrics-address", f"{host}:{port + index}"]
    return command


def run_processes(config: Config, run_share: Callable[[Callable[[int], None]], Any]) -> int:
    """Start ``config.scale.processes - 1`` children, run this process's share with
    ``run_share(forward)`` (``forward(signum)`` passes a stop signal on to the children), then
    wait for the children; returns how many of them failed."""
    count = config.scale.processes
    with tempfile.TemporaryDirectory(prefix="indexer-run-") as directory:
        config_file = _config_file(config, directory)
        os.chmod(config_file, 0o600)  # it may hold a DSN with a password
        children: list[subprocess.Popen[bytes]] = []

        def forward(signum: int) -> None:
            for child in children:
                if child.poll() is None:
                    child.send_signal(signum)

        previous = {
            s: signal.signal(s, lambda signum, frame: forward(signum))
            for s in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            env = {**os.environ, "INDEXER_PROCESS_INDEX": ""}
            for index in range(1, count):
                env["INDEXER_PROCESS_INDEX"] = str(index)
                children.append(
                    subprocess.Popen(
                        child_command(config, config_file, index), env=env, start_new_session=True
                    )
                )
            log.info("started worker processes", processes=count, pids=[c.pid for c in children])
            run_share(forward)
            codes = [child.wait() for child in children]
        finally:
            for child in children:  # the parent itself failed: take the children down with it
                if child.poll() is None:
                    child.terminate()
                    child.wait()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    failed = [(c.pid, code) for c, code in zip(children, codes, strict=True) if code != 0]
    for pid, code in failed:
        log.error("worker process failed", pid=pid, exit_code=code)
    return len(failed)

"""A reader of the command's output that goes away (``indexer run ... 2>&1 | head -n 1``)
neither blocks nor breaks the run's shutdown: SIGTERM still stops it gracefully, exit 0, with
everything committed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from harness import INDEXER, TIMEOUT, command_env, eventually, run_indexer, saved_watermark

REPO = Path(__file__).resolve().parent.parent
COUNT = 300

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


@pytest.mark.parametrize("level", ["info", "debug"])
def test_sigterm_stops_a_run_whose_output_reader_went_away(tmp_path: Path, level: str) -> None:
    feed, db = tmp_path / "feed", tmp_path / "index.db"
    done = run_indexer("generate", "--out", feed, "--count", COUNT, "--seed", 3)
    assert done.returncode == 0, done.stderr
    args = ["run", "-c", REPO / "config.example.toml", "--feed", feed, "--store", f"sqlite:{db}"]
    args += ["--no-metrics", "--log-format", "json", "--log-level", level]
    process = subprocess.Popen(
        [str(INDEXER), *map(str, args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=command_env(),
    )
    try:
        assert process.stdout is not None
        assert json.loads(process.stdout.readline())["event"]  # the run is logging
        process.stdout.close()  # `| head -n 1` has its line and exits
        eventually(
            "every checkpoint committed", lambda: saved_watermark(db, "transactions") == COUNT
        )
        process.send_signal(signal.SIGTERM)  # its "stopping" lines go to the closed pipe
        assert process.wait(TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert saved_watermark(db, "transactions") == COUNT

"""The live progress bars, as ``indexer run`` draws them on a real terminal (a pty): this
run's range as the total, a final frame with what the run ended at, log lines on lines of
their own above the bars, and one job-wide bar for ``--processes``."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import INDEXER, Background, command_env, run_indexer, saved_watermark

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="a POSIX terminal")

COUNT = 600
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("feed") / "feed"
    done = run_indexer("generate", "--out", directory, "--count", COUNT, "--seed", 7)
    assert done.returncode == 0, done.stderr
    return directory


def write_config(tmp_path: Path, feed: Path) -> Path:
    path = tmp_path / "cfg.toml"
    path.write_text(
        f"""
[source]
feed = "{feed}"
follow = false

[progress]
store = "sqlite:{tmp_path / "index.db"}"

[metrics]
enabled = false

[scale]
chunk_size = 100

[pipelines.txs]
worker = "slow_workers:SlowTransactionExtractor"
options = {{ delay = 0.002 }}
concurrency = 8
"""
    )
    return path


def on_a_terminal(*args: object) -> tuple[int, str, str]:
    """``indexer ARGS`` with its stderr on a pty: exit code, stdout, what the terminal got
    (escape sequences removed, carriage returns as line ends)."""
    main, terminal = pty.openpty()
    env = command_env({"COLUMNS": "120", "TERM": "xterm"})
    process = subprocess.Popen(
        [str(INDEXER), *map(str, args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=terminal,
        env=env,
        text=True,
    )
    os.close(terminal)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(main)
    stdout = process.stdout.read() if process.stdout is not None else ""
    code = process.wait(timeout=60)
    screen = ANSI.sub("", b"".join(chunks).decode(errors="replace")).replace("\r", "\n")
    return code, stdout, screen


def bar_lines(screen: str) -> list[str]:
    return [line for line in screen.splitlines() if line.startswith("txs ")]


def test_a_resumed_run_shows_its_own_range_and_ends_on_a_final_frame(
    feed: Path, tmp_path: Path
) -> None:
    config = write_config(tmp_path, feed)
    first = run_indexer("run", "-c", config, "--last-checkpoint", 299, "--no-metrics")
    assert first.returncode == 0, first.stderr
    code, stdout, screen = on_a_terminal(
        "run", "-c", config, "--last-checkpoint", COUNT - 1, "--log-format", "console"
    )
    assert code == 0, screen
    bars = bar_lines(screen)
    assert bars, screen
    # The total is this run's range (300..599), never the checkpoints since 0; the last
    # frame drawn shows the run complete.
    assert all(re.search(r"\b\d+/300\b", line) for line in bars), bars
    assert re.search(r"\b300/300\b.*100%", bars[-1]), bars[-1]
    # Log lines stand on lines of their own: none is glued onto a bar.
    assert any("pipeline starting" in line for line in screen.splitlines()), screen
    assert not any("pipeline starting" in line for line in bars), bars
    assert stdout.startswith("processed 300 checkpoints in "), stdout


def test_processes_show_one_bar_for_the_whole_job(feed: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path, feed)
    code, stdout, screen = on_a_terminal(
        "run", "-c", config, "--last-checkpoint", COUNT - 1, "--processes", 2
    )
    assert code == 0, screen
    bars = bar_lines(screen)
    assert bars and re.search(rf"\b{COUNT}/{COUNT}\b.*100%", bars[-1]), bars
    assert f"processed {COUNT} checkpoints in " in stdout, stdout


def test_the_summary_counts_checkpoints_per_pipeline_over_the_time_spent_working(
    feed: Path, tmp_path: Path
) -> None:
    """Two pipelines over 600 checkpoints processed 600, not 1,200; a run that then tails an
    idle feed for a while reports the rate of its work, not of its idling."""
    config = write_config(tmp_path, feed)
    with config.open("a") as file:
        file.write(
            '\n[pipelines.again]\nworker = "slow_workers:SlowTransactionExtractor"\n'
            "options = { delay = 0.002 }\nconcurrency = 8\n"
        )
    config.write_text(config.read_text().replace("follow = false", "follow = true"))
    run = Background.indexer("run", "-c", config, "--log-format", "json", "--no-progress")
    db = tmp_path / "index.db"
    for pipeline in ("txs", "again"):
        run.wait_until(f"{pipeline} done", lambda p=pipeline: saved_watermark(db, p) == COUNT)
    idle = 2.0  # the scenario itself: a run with nothing to do for a while
    time.sleep(idle)
    assert run.stop(signal.SIGTERM) == 0, run.describe()
    (line,) = run.stdout
    match = re.fullmatch(
        r"processed (\d+) checkpoints in ([\d.]+)s \(([\d,]+)/s\); watermarks: "
        r"txs=(\d+), again=(\d+)",
        line,
    )
    assert match is not None, line
    processed, elapsed, rate = int(match[1]), float(match[2]), int(match[3].replace(",", ""))
    assert processed == COUNT and match[4] == match[5] == str(COUNT), line
    assert rate > processed / (elapsed - idle * 0.75), line  # over the working time only

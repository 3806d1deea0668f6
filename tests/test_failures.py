"""A worker that fails, as a user meets it on day one: the first failure's traceback in the log,
a bug halting the run after a bounded number of attempts (naming the worker's file and line)
instead of retrying forever, an outage retried as long as the policy says, and ``indexer
status`` naming the checkpoint that holds the watermark back.

The library's part runs the real pipeline (``run_worker``); the command's part runs the real
``indexer`` with the workers of ``tests/programs/failing_workers.py``.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from harness import PROGRAMS, TIMEOUT, Background, eventually, parse_events, run_indexer
from harness import saved_watermark as saved

from indexer import Checkpoint, PipelineHalted, RetryPolicy, Worker
from indexer.progress import MemoryProgressStore, Stall
from indexer.testing import make_checkpoints, run_worker

#: Retries in milliseconds: the bug rule's defaults are the ones under test, not the waits.
FAST = {"initial": 0.001, "max_delay": 0.002}
WORKERS = PROGRAMS / "failing_workers.py"


def line_of(path: Path, code: str) -> int:
    """The number of the line of ``path`` whose code starts with ``code``."""
    lines = path.read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if line.strip().startswith(code))


# -- the library: a bug halts, an outage does not ---------------------------------------------


class Typo(Worker[Checkpoint, int]):
    """From checkpoint 10 on, a typo."""

    async def process_checkpoint(self, checkpoint: Checkpoint) -> int:
        if checkpoint.sequence_number < 10:
            return checkpoint.sequence_number
        return checkpoint.sequnce_number  # type: ignore[attr-defined, no-any-return]


TYPO_LINE = line_of(Path(__file__), "return checkpoint.sequnce_number")


@pytest.mark.parametrize("concurrency", [1, 8])
async def test_a_typo_halts_by_default_naming_the_line_and_keeps_what_was_committed(
    concurrency: int,
) -> None:
    """Under an unlimited policy: ``bug_checkpoints`` (3) checkpoints, or ``concurrency`` if
    fewer, failing ``bug_attempts`` (5) times each with the same error at the same line."""
    store = MemoryProgressStore()
    policy = RetryPolicy(**FAST)
    assert policy.max_attempts is None
    with pytest.raises(PipelineHalted) as caught:
        await run_worker(
            Typo(), make_checkpoints(40), concurrency=concurrency, retry=policy, store=store
        )
    message = str(caught.value)
    assert "\n" not in message
    here = Path(__file__).relative_to(Path.cwd())
    error = "AttributeError(\"'Checkpoint' object has no attribute 'sequnce_number'\")"
    assert f"5 times with {error} at {here}:{TYPO_LINE} (in process_checkpoint)" in message
    which = r"checkpoint 10 failed" if concurrency == 1 else r"checkpoints 1\d(, 1\d){2,} each"
    assert re.match(rf"pipeline 'Typo': {which}", message), message
    assert caught.value.sequence_number is not None and caught.value.sequence_number >= 10
    assert await store.load("Typo") == 10  # what was committed stays committed
    (stall,) = await store.stalls("Typo")  # and the stuck checkpoint stays recorded
    assert stall.checkpoint == 10 and stall.location == f"{here}:{TYPO_LINE}"


async def test_a_bug_halts_even_when_the_policy_would_skip_it() -> None:
    """Skipping would dead-letter every checkpoint, one after the other."""
    policy = RetryPolicy(max_attempts=10, on_exhausted="skip", **FAST)
    store = MemoryProgressStore()
    with pytest.raises(PipelineHalted, match="a bug in the code"):
        await run_worker(Typo(), make_checkpoints(40), concurrency=4, retry=policy, store=store)
    assert await store.dead_letters() == []


class ServiceDown(Worker[Checkpoint, int]):
    """Fails every checkpoint with ``error`` while the service is down: until each of the first
    ``spread`` checkpoints has failed ``times`` times. Then records the store's stalls."""

    def __init__(self, error: Exception, spread: int, times: int, store: MemoryProgressStore):
        self.error = error
        self.spread = spread
        self.times = times
        self.store = store
        self.failures: dict[int, int] = {}
        self.stalls_seen: list[Stall] = []

    async def process_checkpoint(self, checkpoint: Checkpoint) -> int:
        n = checkpoint.sequence_number
        if not self.stalls_seen:
            down = len(self.failures) < self.spread or min(self.failures.values()) < self.times
            if down:
                self.failures[n] = self.failures.get(n, 0) + 1
                raise self.error
            self.stalls_seen = await self.store.stalls()
        return n


@pytest.mark.parametrize(
    "error",
    [ConnectionRefusedError(111, "Connection refused"), TimeoutError(), KeyError("result")],
    ids=["connection", "timeout", "key-error"],
)
async def test_an_outage_on_every_checkpoint_keeps_retrying_under_an_unlimited_policy(
    error: Exception,
) -> None:
    """The same error at the same line on many checkpoints, far more often than the bug rule's
    counts, but of a type an outage raises (``KeyError``: what a lookup in a service's error
    answer raises, not a bug by default): retried until the service is back."""
    policy = RetryPolicy(**FAST)
    store = MemoryProgressStore()
    times = 4 * policy.bug_attempts
    worker = ServiceDown(error, spread=2 * policy.bug_checkpoints, times=times, store=store)
    result = await run_worker(
        worker, make_checkpoints(30), concurrency=8, retry=policy, store=store
    )
    assert result.watermark == 30 and result.messages == list(range(30))
    assert len(worker.failures) >= 2 * policy.bug_checkpoints
    assert min(worker.failures.values()) >= times
    (seen,) = [s for s in worker.stalls_seen if s.checkpoint == 0]  # reported while down
    assert seen.attempts >= 1 and seen.error == repr(error)
    assert await store.stalls() == []  # and cleared once it was back


async def test_bug_errors_decide_which_errors_mean_a_bug() -> None:
    store = MemoryProgressStore()
    worker = ServiceDown(KeyError("typ"), spread=3, times=10**9, store=store)
    policy = RetryPolicy(bug_errors=("KeyError",), **FAST)
    with pytest.raises(PipelineHalted, match=r"checkpoints 0, 1, 2 each failed 5 times with Key"):
        await run_worker(worker, make_checkpoints(3), concurrency=3, retry=policy, store=store)


def test_the_bug_rule_is_configured_under_the_retry_table(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from indexer.cli import main

    path = tmp_path / "c.toml"
    table = '[progress]\nstore = "memory"\n[pipelines.p]\nworker = "workers:ActivityCounter"\n'
    path.write_text(table + "[pipelines.p.retry]\nbug_attempts = 0\n")
    result = CliRunner().invoke(main, ["config", "check", "-c", str(path)])
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"indexer: error: {path}: pipelines.p.retry.bug_attempts must be at least 1, got 0\n"
    )
    path.write_text(table + '[pipelines.p.retry]\nbug_errors = ["KeyError", "mylib.BadData"]\n')
    result = CliRunner().invoke(main, ["config", "show", "-c", str(path)])
    assert result.exit_code == 0, result.output
    assert '"KeyError"' in result.stdout and "bug_checkpoints = 3" in result.stdout


_STDLIB_PROGRAM = textwrap.dedent(
    """
    import asyncio, logging
    from indexer import RetryPolicy, Worker
    from indexer.testing import make_checkpoints, run_worker

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    class FailsTwice(Worker):
        calls = 0

        async def process_checkpoint(self, checkpoint):
            self.calls += 1
            if self.calls <= 2:
                raise ValueError("not yet")
            return 1

    asyncio.run(run_worker(FailsTwice(), make_checkpoints(1), retry=RetryPolicy(initial=0.001)))
    """
)


def test_the_standard_logger_gets_the_first_failures_traceback() -> None:
    """Without structlog (a library user's application): the traceback below the message."""
    done = subprocess.run(
        [sys.executable, "-c", _STDLIB_PROGRAM],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    text = done.stderr
    first, second = text.split("WARNING checkpoint failed, retrying ")[1:]
    assert "attempt=1" in first and "Traceback (most recent call last):" in first
    line = next(n for n, code in enumerate(_STDLIB_PROGRAM.splitlines(), 1) if "raise" in code)
    assert f'File "<string>", line {line}, in process_checkpoint' in first
    assert "attempt=2" in second and "Traceback" not in second


# -- the command --------------------------------------------------------------------------------


def write_config(directory: Path, worker: str, **pipeline: Any) -> Path:
    """A run over 40 synthetic checkpoints into ``index.db``, with one pipeline."""
    config = {
        "source": {"kind": "synthetic", "count": 40},
        "progress": {"store": "sqlite:index.db"},
        "metrics": {"enabled": False},
        "pipelines": {"p": {"worker": f"failing_workers:{worker}", **pipeline}},
    }
    path = directory / "config.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def test_a_typo_in_a_worker_halts_the_run_with_its_traceback_and_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, "TypoWorker", concurrency=4, options={"typo_from": 10})
    started = time.monotonic()
    done = run_indexer("run", "-c", config, "--log-format", "json", cwd=tmp_path)
    elapsed = time.monotonic() - started
    line = line_of(WORKERS, "return sum(len(tx.evnts)")

    assert done.returncode == 1, done.stderr
    *logged, last = done.stderr.splitlines()
    error = "AttributeError(\"'Transaction' object has no attribute 'evnts'\")"
    assert re.fullmatch(
        r"indexer: error: pipeline 'p': checkpoints 1\d(, 1\d)+ each failed 5 times with "
        + re.escape(f"{error} at {WORKERS}:{line} (in <genexpr>): a bug in the code")
        + r".*; fix it and run again",
        last,
    ), last
    assert elapsed < 15.0, f"the halt took {elapsed:.1f}s"  # 5 attempts: about 1.5 s of waits

    events = parse_events(logged)  # every other line is one JSON record, tracebacks included
    failed = [e for e in events if e["event"] == "checkpoint failed, retrying"]
    with_traceback = [e for e in failed if "exception" in e]
    assert len(with_traceback) == 1, with_traceback  # the same failure: its traceback once
    (first,) = with_traceback
    assert first["attempt"] == 1 and first["location"] == f"{WORKERS}:{line}"
    assert f'File "{WORKERS}", line {line}, in <genexpr>' in first["exception"]
    assert first["exception"].endswith(
        "AttributeError: 'Transaction' object has no attribute 'evnts'"
    )
    later = [e for e in failed if e is not first and e["checkpoint"] == first["checkpoint"]]
    assert later and all(e["attempt"] > 1 for e in later)  # later attempts: one line each
    assert saved(tmp_path / "index.db", "p") == 10  # what was committed stays committed


def status(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = run_indexer("status", "-c", config, *args, cwd=config.parent)
    assert done.returncode == 0, done.stderr
    return done


def stuck(config: Path) -> dict[str, Any] | None:
    """The status report's pipeline row once it names a stuck checkpoint."""
    (row,) = json.loads(status(config, "--json").stdout)["pipelines"]
    return row if row["stuck"] is not None and row["watermark"] == 5 else None


def test_status_names_the_checkpoint_holding_the_watermark_back(tmp_path: Path) -> None:
    """A service down from checkpoint 5 on, retried forever (the default policy)."""
    config = write_config(tmp_path, "ServiceDownWorker", concurrency=2, options={"down_from": 5})
    run = Background.indexer("run", "-c", config, "--log-format", "json", cwd=tmp_path)
    row = eventually("a stuck checkpoint in indexer status", lambda: stuck(config))
    line = line_of(WORKERS, 'raise ConnectionError("connection refused')
    error = "ConnectionError('connection refused: the service is down')"
    report = row["stuck"]
    assert (report["checkpoint"], report["error"]) == (5, error)
    assert report["location"] == f"{WORKERS}:{line}"
    assert report["attempts"] >= 1
    assert 0 <= report["seconds_since_commit"] <= report["seconds_failing"] + 1.0
    assert report["seconds_since_report"] >= 0

    table = status(config).stdout
    assert "p: stuck at checkpoint 5 (" in table and "attempts, failing for " in table
    assert "last commit " in table and f"  {error}\n" in table
    assert f"  at {WORKERS}:{line}\n" in table

    assert run.returncode is None, run.describe()  # an outage never halts an unlimited policy
    assert run.stop(signal.SIGTERM) == 0, run.describe()
    assert not [e for e in run.events() if e["event"] == "pipeline halted"]
    after = stuck(config)  # the stopped run left it recorded: the watermark is still held there
    assert after is not None and after["stuck"]["checkpoint"] == 5

"""The ``indexer`` command: every command through click's CliRunner, then the real binary in
subprocesses (a run to a last checkpoint, restarts, SIGTERM and Ctrl+C, the metrics endpoint,
JSON logs and the exit codes of failures).

Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error; an error is one line
on stderr starting with ``indexer: error:``. The subprocess tests put ``tests/programs`` on
PYTHONPATH for ``slow_workers:SlowTransactionExtractor``, which sleeps before each checkpoint so
a run lasts long enough to be scraped and stopped while it is processing.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from click.testing import CliRunner, Result
from harness import (
    Background,
    check_metrics_with_promtool,
    free_port,
    parse_events,
    run_indexer,
    saved_watermark,
)
from prometheus_client.parser import text_string_to_metric_families

import indexer
from indexer.checkpoint import encode_checkpoint
from indexer.cli import main
from indexer.progress import SqliteProgressStore
from indexer.sources import SyntheticSource

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.example.toml"
PIPELINE = "transactions"
SEED = 3
FEED_COUNT = 300  # checkpoints 0..299
TIMEOUT = 10.0  # generous waits for a loaded 2-core machine; the assertions stay exact
RUN_TIMEOUT = 60.0  # a whole subprocess that should end by itself
MAX_INFLIGHT = 16  # the window of the slow pipeline (``write_config(delay=...)``)

SUMMARY = re.compile(
    r"processed (?P<processed>\d+) checkpoints in [\d.]+s \([\d,]+/s\); "
    r"watermarks: transactions=(?P<watermark>\d+)"
)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


# -- helpers ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_indexer_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """INDEXER_* variables of the calling shell must not leak into the tests."""
    for key in list(os.environ):
        if key.startswith("INDEXER_"):
            monkeypatch.delenv(key)


def cli(*args: Any, env: dict[str, str] | None = None) -> Result:
    """``indexer ARGS`` in-process; stdout and stderr are kept apart."""
    return CliRunner().invoke(
        main, [str(a) for a in args], env=env, prog_name="indexer", catch_exceptions=False
    )


def assert_one_error_line(stderr: str, *needles: str) -> str:
    """stderr is exactly one ``indexer: error:`` line containing every needle."""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    line = lines[0]
    assert line.startswith("indexer: error: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


@functools.cache
def _source() -> SyntheticSource:
    return SyntheticSource(seed=SEED)


@functools.cache
def _rows_of(n: int) -> tuple[tuple[Any, ...], ...]:
    """What TransactionExtractor makes of checkpoint n of the seed-3 feed."""
    checkpoint = _source().checkpoint_at(n)
    return tuple(
        (n, tx.digest, tx.sender, len(tx.events), checkpoint.timestamp_ms)
        for tx in checkpoint.transactions
    )


def expected_rows(stop: int) -> list[tuple[Any, ...]]:
    """The rows of checkpoints 0..stop-1, each exactly once, sorted."""
    return sorted(row for n in range(stop) for row in _rows_of(n))


def read_rows(db: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT checkpoint, digest, sender, event_count, timestamp_ms FROM transactions"
        ).fetchall()
    finally:
        conn.close()
    return sorted(rows)


def read_watermark(db: Path, pipeline: str = PIPELINE) -> int | None:
    """The watermark saved in the SQLite store, or None (no file, table or row yet)."""
    return saved_watermark(db, pipeline)


def write_store(db: Path, watermarks: dict[str, int], dead_letters: dict[str, list[int]]) -> None:
    async def go() -> None:
        async with SqliteProgressStore(db) as store:
            for pipeline, watermark in watermarks.items():
                await store.reset(pipeline, watermark)
            for pipeline, numbers in dead_letters.items():
                for n in numbers:
                    await store.add_dead_letter(pipeline, n, "boom")

    asyncio.run(go())


def write_config(
    path: Path,
    feed: Path,
    db: Path,
    *,
    port: int | None = None,
    delay: float | None = None,
    **source: Any,
) -> Path:
    """config.example.toml with the feed, store and metrics port of a test; with ``delay`` the
    pipeline runs SlowTransactionExtractor one checkpoint at a time, committing small batches."""
    with EXAMPLE.open("rb") as file:
        data = tomllib.load(file)
    data["source"]["feed"] = str(feed)
    data["source"].update(source)
    data["progress"]["store"] = f"sqlite:{db}"
    data["metrics"]["address"] = f"127.0.0.1:{port if port is not None else free_port()}"
    if delay is not None:
        pipeline = data["pipelines"][PIPELINE]
        pipeline["worker"] = "slow_workers:SlowTransactionExtractor"
        pipeline["options"] = {"delay": delay}
        pipeline["concurrency"] = 1
        pipeline["max_inflight"] = MAX_INFLIGHT
        pipeline["reducer"]["max_batch_size"] = 10
        pipeline["reducer"]["max_batch_age"] = 0.05
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def run_binary(*args: Any, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``indexer ARGS`` to completion."""
    return run_indexer(*args, cwd=cwd, timeout=RUN_TIMEOUT)


def json_lines(stderr: str) -> list[dict[str, Any]]:
    """Every stderr line as a JSON object with an ``event``."""
    return parse_events(stderr.splitlines())


def summary(stdout: str) -> tuple[int, int]:
    """(processed, watermark) from the one summary line ``indexer run`` prints."""
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout
    match = SUMMARY.fullmatch(lines[0])
    assert match is not None, lines[0]
    return int(match["processed"]), int(match["watermark"])


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A feed of checkpoints 0..299 of seed 3, made by ``indexer generate``."""
    directory = tmp_path_factory.mktemp("feed") / "feed"
    result = cli("generate", "--out", directory, "--count", FEED_COUNT, "--seed", SEED)
    assert result.exit_code == 0, result.output
    return directory


# -- CliRunner: help, version, config -------------------------------------------------------


def test_version() -> None:
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout == f"indexer, version {indexer.__version__}\n"


@pytest.mark.parametrize(
    ("command", "mentions"),
    [
        ([], "generate"),
        (["run"], "--last-checkpoint"),
        (["status"], "--json"),
        (["reset"], "--force"),
        (["generate"], "--seed"),
        (["config"], "check"),
        (["config", "show"], "--store"),
        (["config", "check"], "--config"),
        (["init"], "--name"),
    ],
    ids=lambda value: " ".join(value) or "indexer" if isinstance(value, list) else value,
)
def test_help(command: list[str], mentions: str) -> None:
    for flag in ("--help", "-h"):
        result = cli(*command, flag)
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith(f"Usage: {' '.join(['indexer', *command])} "), result.stdout
        assert mentions in result.stdout
        assert result.stderr == ""


def test_config_check_accepts_the_example(tmp_path: Path) -> None:
    """The example beside the feed ``make demo`` writes: its paths lead beside the file."""
    example = Path(shutil.copy(EXAMPLE, tmp_path))
    (tmp_path / "demo" / "feed").mkdir(parents=True)
    result = cli("config", "check", "-c", example)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "pipelines: transactions (imported and built)",
        f"source.feed: {tmp_path / 'demo/feed'} (a readable directory)",
        f"progress.store: sqlite:{tmp_path / 'demo/index.db'} (to be created)",
        f"{example}: OK (1 pipelines: transactions)",
    ]
    assert result.stderr == ""


def test_config_check_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(EXAMPLE, tmp_path)
    (tmp_path / "demo" / "feed").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    result = cli("config", "check", "-c", "config.example.toml")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1:] == [
        "source.feed: demo/feed (a readable directory)",
        "progress.store: sqlite:demo/index.db (to be created)",
        "config.example.toml: OK (1 pipelines: transactions)",
    ]


def test_config_show_masks_the_dsn_password() -> None:
    result = cli("config", "show", "--store", "postgresql://u:secret@h/db")
    assert result.exit_code == 0, result.output
    assert "u:***@h" in result.stdout
    assert "secret" not in result.output
    assert tomllib.loads(result.stdout)["progress"]["store"] == "postgresql://u:***@h/db"


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),
        (
            "postgresql://h/db?sslmode=require&password=secret",
            "postgresql://h/db?sslmode=require&password=***",
        ),
        ("postgresql://u@h:5433/db", "postgresql://u@h:5433/db"),
    ],
)
def test_config_show_masks_every_form_of_password(dsn: str, shown: str) -> None:
    result = cli("config", "show", "--store", dsn)
    assert result.exit_code == 0, result.output
    assert tomllib.loads(result.stdout)["progress"]["store"] == shown


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["run", "--bogus"], ["No such option '--bogus'", "indexer run --help"]),
        (["generate", "--out", "x", "--count", "0"], ["'--count'", "0 is not in the range"]),
        (["reset", "--to", "3"], ["Missing option '--pipeline'"]),
        (["frobnicate"], ["No such command 'frobnicate'"]),
    ],
)
def test_usage_errors_are_one_line_with_exit_code_2(args: list[str], needles: list[str]) -> None:
    result = cli(*args)
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, *needles)


def test_status_and_reset_do_not_create_a_missing_store(tmp_path: Path) -> None:
    db = tmp_path / "typo" / "index.db"
    report = status_json("--store", f"sqlite:{db}")
    assert report == {"store": f"sqlite:{db}", "store_exists": False, "pipelines": []}
    result = cli("reset", "--store", f"sqlite:{db}", "--pipeline", "p", "--to", "3", "--force")
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "unknown pipeline 'p'", "(known: none)")
    assert not db.parent.exists()


@pytest.mark.parametrize(
    ("command", "content", "needles"),
    [
        (["config", "show"], "[source]\nbogus = 1\n", ["source.bogus"]),
        (
            ["config", "show"],
            '[pipelines.a]\nworker = "workers:TransactionExtractor"\nconcurrency = "x"\n',
            ["pipelines.a.concurrency"],
        ),
        (["config", "show"], "[pipelines.a]\nconcurrency = 2\n", ["pipelines.a.worker"]),
        (
            ["config", "check"],
            '[pipelines.a]\nworker = "nope.module:X"\n',
            ["pipelines.a.worker", "nope.module"],
        ),
        (["config", "show"], "[source\nfeed = ", ["TOML"]),
        (["run"], "[source]\nbogus = 1\n", ["source.bogus"]),
        (["status"], "[source]\nbogus = 1\n", ["source.bogus"]),
    ],
    ids=[
        "unknown-key",
        "wrong-type",
        "missing-worker",
        "bad-import",
        "invalid-toml",
        "run",
        "status",
    ],
)
def test_config_errors(
    tmp_path: Path, command: list[str], content: str, needles: list[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(content, encoding="utf-8")
    result = cli(*command, "-c", path)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert_one_error_line(result.stderr, str(path), *needles)


def test_uvloop_asked_for_but_missing_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    db = tmp_path / "index.db"
    result = cli("run", "--store", f"sqlite:{db}", "--event-loop", "uvloop", "--no-metrics")
    assert result.exit_code == 2, result.output
    assert_one_error_line(result.stderr, "run.event_loop", "uvloop is not installed")
    assert not db.exists()  # refused before any work


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    result = cli("config", "show", "-c", path)
    assert result.exit_code == 2, result.output
    assert_one_error_line(result.stderr, str(path), "not found")


def test_precedence_flags_over_environment_over_file_over_defaults(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[source]\nfeed = "from-file"\npoll_interval = 0.5\n', encoding="utf-8")

    def shown(*args: Any, env: dict[str, str] | None = None) -> dict[str, Any]:
        result = cli("config", "show", *args, env=env)
        assert result.exit_code == 0, result.output
        return tomllib.loads(result.stdout)["source"]

    assert shown()["feed"] == "feed"  # the default
    assert shown()["poll_interval"] == 0.1
    assert shown(env={"INDEXER_FEED": "from-env"})["feed"] == "from-env"
    assert shown("--feed", "from-flag", env={"INDEXER_FEED": "from-env"})["feed"] == "from-flag"
    from_file = shown("-c", path)
    assert from_file["feed"] == str(tmp_path / "from-file")  # beside the file
    assert from_file["poll_interval"] == 0.5  # the file over the default
    assert shown("-c", path, env={"INDEXER_FEED": "from-env"})["feed"] == "from-env"
    both = shown("-c", path, "--feed", "from-flag", env={"INDEXER_FEED": "from-env"})
    assert both["feed"] == "from-flag"
    assert both["poll_interval"] == 0.5  # keys not overridden still come from the file
    assert shown(env={"INDEXER_CONFIG": str(path)})["feed"] == str(tmp_path / "from-file")


# -- CliRunner: status, reset, generate, init ------------------------------------------------


def status_json(*args: Any) -> dict[str, Any]:
    result = cli("status", "--json", *args)
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def feed_lag_seconds(n: int) -> Any:
    """What status says ``lag_seconds`` is when checkpoint ``n`` is the newest committed one:
    now minus its ``timestamp_ms`` (within the test's run time)."""
    stamp = SyntheticSource(seed=SEED).checkpoint_at(n).timestamp_ms
    return pytest.approx(time.time() - stamp / 1000, abs=RUN_TIMEOUT)


def test_status_json(tmp_path: Path, feed: Path) -> None:
    db = tmp_path / "index.db"
    write_store(db, {PIPELINE: 120, "retired": 400}, {PIPELINE: [17, 5]})
    config = write_config(tmp_path / "config.toml", feed, db)
    assert status_json("-c", config) == {
        "store": f"sqlite:{db}",
        "store_exists": True,
        "pipelines": [
            {
                "pipeline": PIPELINE,
                "watermark": 120,
                "feed_latest": FEED_COUNT - 1,
                "lag": FEED_COUNT - 120,
                "lag_seconds": feed_lag_seconds(119),
                "dead_letters": [5, 17],
                "pruned_below": None,
                "stuck": None,
            },
            {  # saved but no longer configured; past the feed's end
                "pipeline": "retired",
                "watermark": 400,
                "feed_latest": FEED_COUNT - 1,
                "lag": 0,
                "lag_seconds": None,  # checkpoint 399 is not in the feed
                "dead_letters": [],
                "pruned_below": None,
                "stuck": None,
            },
        ],
    }


def test_status_json_of_a_pipeline_without_watermark(tmp_path: Path, feed: Path) -> None:
    db = tmp_path / "index.db"
    config = write_config(tmp_path / "config.toml", feed, db)
    report = status_json("-c", config, "--feed", tmp_path / "empty-feed")
    assert report["pipelines"] == [
        {
            "pipeline": PIPELINE,
            "watermark": None,
            "feed_latest": None,
            "lag": None,
            "lag_seconds": None,
            "dead_letters": [],
            "pruned_below": None,
            "stuck": None,
        }
    ]


def test_status_table(tmp_path: Path, feed: Path) -> None:
    db = tmp_path / "index.db"
    write_store(db, {PIPELINE: 120}, {})
    result = cli("status", "--store", f"sqlite:{db}", "--feed", feed)
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if PIPELINE in line)
    numbers = re.findall(r"[\d.]+", row)
    assert numbers[:3] == ["120", str(FEED_COUNT - 1), str(FEED_COUNT - 120)]
    assert float(numbers[3]) == feed_lag_seconds(119)  # lag seconds
    assert numbers[4:] == ["0"]


def test_reset(tmp_path: Path, feed: Path) -> None:
    db = tmp_path / "index.db"
    write_store(db, {PIPELINE: 120}, {})
    store = f"sqlite:{db}"

    def watermark() -> int:
        (row,) = status_json("--store", store, "--feed", feed)["pipelines"]
        assert row["pipeline"] == PIPELINE
        return int(row["watermark"])

    result = cli("reset", "--store", store, "--pipeline", PIPELINE, "--to", 50)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert_one_error_line(result.stderr, "would reset", f"'{PIPELINE}'", "120", "50", "--force")
    assert watermark() == 120  # unchanged

    result = cli("reset", "--store", store, "--pipeline", PIPELINE, "--to", 50, "--force")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"reset pipeline '{PIPELINE}' from 120 to 50 in {store}\n"
    assert watermark() == 50
    assert read_watermark(db) == 50


def test_generate_is_deterministic(tmp_path: Path) -> None:
    one, two, other = tmp_path / "one", tmp_path / "two", tmp_path / "other"
    for directory, seed in ((one, SEED), (two, SEED), (other, SEED + 1)):
        result = cli("generate", "--out", directory, "--count", 50, "--seed", seed)
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith(f"wrote 50 checkpoints (0..49) to {directory} in ")
    names = {f"{n}.chk" for n in range(50)}
    assert {p.name for p in one.iterdir()} == names
    assert {p.name for p in two.iterdir()} == names
    for n in range(50):
        data = (one / f"{n}.chk").read_bytes()
        assert data == (two / f"{n}.chk").read_bytes()
        assert data == encode_checkpoint(SyntheticSource(seed=SEED).checkpoint_at(n))
        assert data != (other / f"{n}.chk").read_bytes()


def test_init(tmp_path: Path) -> None:
    project = tmp_path / "my-indexer"
    result = cli("init", project)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    match = re.fullmatch(rf"created (\d+) files in {re.escape(str(project))}:", lines[0])
    assert match is not None, lines[0]
    listed = [Path(line.strip()) for line in lines[1:] if line.startswith("  ")]
    assert len(listed) == int(match[1]) > 0
    assert all(path.is_file() for path in listed), listed
    on_disk = {path for path in project.rglob("*") if path.is_file()}
    assert set(listed) == on_disk


# -- the real binary ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def first_run(
    tmp_path_factory: pytest.TempPathFactory, feed: Path
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """``indexer run --last-checkpoint 199 --log-format json`` into a fresh store."""
    tmp = tmp_path_factory.mktemp("first-run")
    db = tmp / "index.db"
    config = write_config(tmp / "config.toml", feed, db)
    result = run_binary(
        "run", "-c", config, "--last-checkpoint", 199, "--log-format", "json", cwd=tmp
    )
    return result, db


def test_run_to_last_checkpoint(first_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    result, db = first_run
    assert result.returncode == 0, result.stderr
    assert summary(result.stdout) == (200, 200)
    assert read_watermark(db) == 200
    rows = read_rows(db)
    assert rows == expected_rows(200)
    assert len(rows) == sum(len(_rows_of(n)) for n in range(200))


def test_json_logs(first_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    result, _db = first_run
    events = json_lines(result.stderr)
    starting = [e for e in events if e["event"] == "pipeline starting"]
    assert len(starting) == 1, events
    assert starting[0]["pipeline"] == PIPELINE
    assert starting[0]["resume_from"] == 0
    assert starting[0]["event_loop"] == ("asyncio" if sys.platform == "win32" else "uvloop")
    assert len(events) < 20, events  # nothing per checkpoint at INFO
    assert all(e["level"] == "info" for e in events), events


def test_restart_resumes(tmp_path: Path, feed: Path) -> None:
    db = tmp_path / "index.db"
    config = write_config(tmp_path / "config.toml", feed, db)
    # No --log-format: stderr is not a terminal, so "auto" logs JSON lines too.
    first = run_binary("run", "-c", config, "--last-checkpoint", 199, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert summary(first.stdout) == (200, 200)

    second = run_binary(
        "run", "-c", config, "--last-checkpoint", 299, "--event-loop", "asyncio", cwd=tmp_path
    )
    assert second.returncode == 0, second.stderr
    assert summary(second.stdout) == (100, 300)
    (starting,) = [e for e in json_lines(second.stderr) if e["event"] == "pipeline starting"]
    assert starting["event_loop"] == "asyncio"
    assert starting["resume_from"] == 200
    assert starting["saved_watermark"] == 200
    assert read_watermark(db) == 300
    assert read_rows(db) == expected_rows(300)  # each row exactly once

    third = run_binary("run", "-c", config, "--last-checkpoint", 299, cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert summary(third.stdout) == (0, 300)
    assert read_rows(db) == expected_rows(300)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_gracefully(tmp_path: Path, feed: Path, signum: signal.Signals) -> None:
    db = tmp_path / "index.db"
    # >= 5 ms per checkpoint one at a time: the feed's 300 take >= 1.5 s, so the signal, sent
    # as soon as the first batch is committed, arrives while the run is still processing.
    config = write_config(tmp_path / "config.toml", feed, db, delay=0.005, follow=True)
    running = Background.indexer("run", "-c", config, cwd=tmp_path)
    running.wait_until("a saved watermark", lambda: read_watermark(db))

    code = running.stop(signum)
    stdout, stderr = running.stdout_text, running.stderr_text
    assert code == 0, stderr
    processed, watermark = summary(stdout)
    assert 0 < watermark < FEED_COUNT, "the signal should have come while processing"
    assert processed >= watermark
    assert read_watermark(db) == watermark
    # Rows and watermark were committed together: exactly the rows of 0..watermark-1.
    assert read_rows(db) == expected_rows(watermark)
    events = json_lines(stderr)
    assert [e["signal"] for e in events if e["event"].startswith("stopping")] == [int(signum)]
    assert events[-1]["event"] == "stopped"
    assert events[-1]["watermarks"] == {PIPELINE: watermark}


def scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            assert response.status == 200
            return str(response.read().decode())
    except OSError:  # URLError, refused, reset, timed out: not serving (yet)
        return None


def samples_of(text: str) -> tuple[dict[str, str], dict[tuple[str, frozenset[Any]], float]]:
    """({family name: type}, {(sample name, labels): value}) of an exposition."""
    types: dict[str, str] = {}
    values: dict[tuple[str, frozenset[Any]], float] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            values[sample.name, frozenset(sample.labels.items())] = sample.value
    return types, values


def test_metrics_endpoint(tmp_path: Path, feed: Path) -> None:
    db = tmp_path / "index.db"
    port = free_port()
    config = write_config(tmp_path / "config.toml", feed, db, port=port, delay=0.002)
    running = Background.indexer("run", "-c", config, cwd=tmp_path)
    pipeline = frozenset({("pipeline", PIPELINE)})
    start = 0  # a fresh store: the run starts at checkpoint 0

    def scraped_with_progress() -> tuple[str, dict[Any, float]] | None:
        text = scrape(port)
        if text is None:
            return None
        _types, values = samples_of(text)
        if values.get(("indexer_watermark", pipeline), 0) > 0:
            return text, values
        return None

    running.wait_until("indexer_watermark > 0", scraped_with_progress)
    # Two more scrapes while it runs: each is one moment of the run (built on its event loop),
    # so the values of different families agree exactly within a scrape.
    texts = [running.wait_until("a scrape", scraped_with_progress)[0] for _ in range(2)]
    for text in texts:
        types, values = samples_of(text)

        def value(name: str, labels: frozenset[Any] = pipeline, values: Any = values) -> float:
            key = (name, labels)
            assert key in values, f"{name}{dict(labels)} missing"
            return float(values[key])

        processed = value("indexer_checkpoints_processed_total")
        watermark = value("indexer_watermark")
        latest = value("indexer_feed_latest_checkpoint", frozenset())
        assert types["indexer_checkpoints_processed"] == "counter"
        assert types["indexer_checkpoint_processing_seconds"] == "histogram"
        for histogram in (
            "indexer_checkpoint_processing_seconds",
            "indexer_reducer_batch_messages",
            "indexer_commit_seconds",
        ):
            assert types[histogram] == "histogram"
            inf = frozenset({*pipeline, ("le", "+Inf")})
            assert value(f"{histogram}_bucket", inf) == value(f"{histogram}_count")
            assert value(f"{histogram}_sum") > 0
        assert types["indexer_watermark"] == "gauge"
        assert 0 <= value("indexer_inflight_checkpoints") <= MAX_INFLIGHT  # the window's bound
        for reason in ("checkpoint", "commit", "watermark"):
            assert value("indexer_retries_total", frozenset({*pipeline, ("reason", reason)})) == 0
        assert value("indexer_dead_letters_total") == 0
        committed = frozenset({*pipeline, ("outcome", "committed")})
        assert value("indexer_reducer_batches_total", committed) >= 1
        assert value("indexer_reducer_batch_messages_sum") == watermark  # one message each
        assert value("indexer_feed_bytes_total", frozenset()) > 0

        assert 0 < watermark <= FEED_COUNT
        assert processed >= watermark - start
        assert value("indexer_checkpoint_processing_seconds_count") == processed
        assert latest == FEED_COUNT - 1
        assert value("indexer_lag_checkpoints") == latest + 1 - watermark

    assert running.stop(signal.SIGTERM) == 0, running.describe()
    _processed, watermark = summary(running.stdout_text)
    assert read_watermark(db) == watermark
    assert read_rows(db) == expected_rows(watermark)

    check_metrics_with_promtool(texts[-1])


def test_bad_config_through_the_binary(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[source]\nbogus = 1\n", encoding="utf-8")
    result = run_binary("run", "-c", path, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert_one_error_line(result.stderr, str(path), "source.bogus")


def test_metrics_port_in_use(tmp_path: Path, feed: Path) -> None:
    db = tmp_path / "index.db"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path / "config.toml", feed, db, port=port)
        result = run_binary("run", "-c", config, "--last-checkpoint", 9, cwd=tmp_path)
    assert result.returncode == 2, result.stderr  # the address is the setting to change
    assert result.stdout == ""
    assert_one_error_line(result.stderr, f"127.0.0.1:{port}")
    assert read_watermark(db) is None  # nothing was indexed

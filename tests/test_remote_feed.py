"""Remote feeds through the real ``indexer`` command: ``indexer run`` over a feed served on
127.0.0.1 by an HTTP server that injects faults (500s, 429 with Retry-After, a response past the
timeout, a connection reset mid-body, a truncated body, a body that does not decode, a tip that
appears later, a 403), into a sink that shares the store's SQLite file: every row is indexed
exactly once whatever the faults. Also ``--processes 2`` over HTTP, ``config check``,
``status`` and the retry metric."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import tomllib
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from feed_server import FeedServer
from harness import Background, check_metrics_with_promtool, free_port, parse_events, run_indexer

from indexer.sources import SyntheticSource, write_feed

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"
PIPELINE = "transactions"  # the example's: TransactionExtractor rows into SqliteSink
#: Small timeouts and backoff (real config keys): faults cost milliseconds, not minutes.
FAST = {
    "connect_timeout": 1.0,
    "request_timeout": 1.0,
    "slow_request": 0.3,
    "retry_initial": 0.01,
    "retry_max_delay": 0.05,
    "poll_interval": 0.02,
    "fetch_concurrency": 16,
}


@pytest.fixture
def feed(tmp_path: Path) -> Path:
    directory = tmp_path / "feed"
    asyncio.run(write_feed(SyntheticSource(), directory, count=120))
    return directory


@pytest.fixture
def http(feed: Path) -> Iterator[FeedServer]:
    with FeedServer(feed, slow_seconds=1.5, late_seconds=0.4) as server:
        yield server


def write_config(tmp_path: Path, url: str, **source: Any) -> Path:
    """config.example.toml reading ``url``, its store (and the sink's rows) in
    ``tmp_path/index.db``, with ``source`` keys over ``FAST``."""
    with EXAMPLE.open("rb") as file:
        data = tomllib.load(file)
    data["source"] = {"feed": url, **FAST, **source}
    data["progress"]["store"] = f"sqlite:{tmp_path / 'index.db'}"
    data["metrics"] = {"enabled": False}
    path = tmp_path / "config.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def run(config: Path, *args: Any) -> Any:
    return run_indexer("run", "-c", config, "--log-format", "json", *args, timeout=60)


def json_events(stderr: str, event: str) -> list[dict[str, Any]]:
    lines = [line for line in stderr.splitlines() if line.startswith("{")]
    return [record for record in parse_events(lines) if record["event"] == event]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith("{")]


def expected_rows(last: int) -> Counter[tuple[int, str]]:
    source = SyntheticSource()
    return Counter(
        (n, tx.digest) for n in range(last + 1) for tx in source.checkpoint_at(n).transactions
    )


def indexed_rows(tmp_path: Path) -> Counter[tuple[int, str]]:
    conn = sqlite3.connect(tmp_path / "index.db")
    try:
        return Counter(conn.execute(f"SELECT checkpoint, digest FROM {PIPELINE}"))
    finally:
        conn.close()


def watermark(tmp_path: Path) -> int:
    conn = sqlite3.connect(tmp_path / "index.db")
    try:
        (mark,) = conn.execute(
            "SELECT next_checkpoint FROM indexer_watermarks WHERE pipeline = ?", (PIPELINE,)
        ).fetchone()
    finally:
        conn.close()
    return int(mark)


def assert_exactly_once(tmp_path: Path, last: int) -> None:
    rows = indexed_rows(tmp_path)
    assert max(rows.values()) == 1, [row for row, count in rows.items() if count > 1][:5]
    assert rows == expected_rows(last)
    assert watermark(tmp_path) == last + 1


FAULTS = {
    3: ["500", "500"],
    7: ["503"],
    11: ["429"],
    15: ["408"],
    21: ["reset"],
    33: ["truncate"],
    47: ["slow"],
    58: ["garbage"],
    64: ["late"],
    90: ["500", "reset", "truncate"],
}


def test_every_row_is_indexed_exactly_once_whatever_the_faults(
    tmp_path: Path, http: FeedServer
) -> None:
    http.faults = {n: list(actions) for n, actions in FAULTS.items()}
    config = write_config(tmp_path, http.url(), follow=False)
    result = run(config, "--last-checkpoint", 119)
    assert result.returncode == 0, result.stderr
    assert error_lines(result.stderr) == []
    assert_exactly_once(tmp_path, 119)
    failing = json_events(result.stderr, "feed requests failing: retrying with backoff")
    assert {e["reason"] for e in failing} == {
        "http_5xx",
        "http_429",
        "http_408",
        "short_body",
        "timeout",
        "decode",
    }
    assert len(failing) == 6  # once per streak (and a minute per reason), not per attempt
    assert json_events(result.stderr, "slow feed request")
    assert all(not actions for actions in http.faults.values())  # every fault was met


def test_a_tip_that_appears_later_is_polled_then_read_and_counted_in_metrics(
    tmp_path: Path, feed: Path, http: FeedServer
) -> None:
    for n in range(60, 120):
        (feed / f"{n}.chk").unlink()
    http.faults = {5: ["500", "500"], 9: ["429"]}
    port = free_port()
    config = write_config(tmp_path, http.url(), follow=True)
    program = Background.indexer(
        "run",
        "-c",
        config,
        "--log-format",
        "json",
        "--last-checkpoint",
        99,
        "--metrics",
        "--metrics-address",
        f"127.0.0.1:{port}",
    )
    http.wait_until("the tip polled", lambda: len(http.gets(60)) >= 3)
    program.wait_until("checkpoints 0..59 committed", lambda: watermark_or_none(tmp_path) == 60)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert 'indexer_feed_fetch_retries_total{reason="http_5xx"} 2.0' in text
    assert 'indexer_feed_fetch_retries_total{reason="http_429"} 1.0' in text
    assert 'indexer_feed_fetch_retries_total{reason="connect"} 0.0' in text
    check_metrics_with_promtool(text)
    asyncio.run(write_feed(SyntheticSource(), feed, start=60, count=40))
    assert program.finish(60) == 0, program.describe()
    assert_exactly_once(tmp_path, 99)


def test_a_gap_in_a_followed_feed_is_warned_once_and_the_lag_shows_it(
    tmp_path: Path, feed: Path, http: FeedServer
) -> None:
    """A file missing while later ones are there is a gap, not the tip: after polling it a
    while the source looks past it, warns once, and the feed's newest checkpoint (the lag)
    counts the files beyond it; when the file appears, the run goes on through it."""
    (feed / "50.chk").unlink()
    port = free_port()
    config = write_config(tmp_path, http.url(), follow=True, poll_interval=0.02)
    program = Background.indexer(
        "run", "-c", config, "--log-format", "json", "--last-checkpoint", 119,
        "--metrics", "--metrics-address", f"127.0.0.1:{port}",
    )  # fmt: skip
    (gap,) = program.wait_until(
        "the gap warned", lambda: [e for e in program.events() if e["event"] == "gap in feed"]
    )
    assert gap["missing"] == 50 and 50 < gap["found"] <= 50 + 256
    assert gap["level"] == "warning" and gap["url"] == http.url()

    def latest() -> float | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        match = re.search(r"^indexer_feed_latest_checkpoint ([0-9.e+]+)$", text, re.M)
        return float(match.group(1)) if match and float(match.group(1)) == 119 else None

    program.wait_until("the feed's newest checkpoint past the gap", latest)
    assert watermark_or_none(tmp_path) == 50
    gets_at_gap = len(http.gets(50))
    http.wait_until("the missing file polled on", lambda: len(http.gets(50)) > gets_at_gap + 50)
    asyncio.run(write_feed(SyntheticSource(), feed, start=50, count=1))
    assert program.finish(60) == 0, program.describe()
    assert_exactly_once(tmp_path, 119)
    assert [e for e in program.events() if e["event"] == "gap in feed"] == [gap]  # once


def watermark_or_none(tmp_path: Path) -> int | None:
    from harness import saved_watermark

    return saved_watermark(tmp_path / "index.db", PIPELINE)


def test_a_bounded_run_over_a_feed_that_ends_early_fails(
    tmp_path: Path, feed: Path, http: FeedServer
) -> None:
    for n in range(60, 120):
        (feed / f"{n}.chk").unlink()
    config = write_config(tmp_path, http.url(), follow=False)
    result = run(config, "--last-checkpoint", 99)
    assert result.returncode == 1, result.stderr
    assert error_lines(result.stderr) == [
        "indexer: error: the feed ended before last_checkpoint 99: checkpoint 60 is missing "
        "(watermarks: transactions=60)"
    ]
    assert_exactly_once(tmp_path, 59)


def test_a_refused_request_halts_with_one_line_naming_the_url_masked(
    tmp_path: Path, http: FeedServer
) -> None:
    http.faults = {30: ["403"]}
    config = write_config(tmp_path, http.url("reader:hunter2@"), follow=False)
    result = run(config, "--last-checkpoint", 119)
    assert result.returncode == 1, result.stderr
    [line] = error_lines(result.stderr)
    url = f"http://reader:***@127.0.0.1:{http.port}/feed/30.chk"
    assert line == (
        f"indexer: error: the feed refused a request: HTTP 403 Forbidden: {url} "
        "(check the feed's URL, credentials and permissions)"
    )
    assert "hunter2" not in result.stderr + result.stdout
    assert watermark(tmp_path) == 30  # what came before the refused file was committed
    rows = indexed_rows(tmp_path)
    assert rows == expected_rows(29)


def test_processes_share_an_http_feed_each_chunk_fetching_only_its_range(
    tmp_path: Path, http: FeedServer
) -> None:
    http.faults = {12: ["500"], 57: ["reset"], 140: ["429"]}
    config = write_config(tmp_path, http.url(), follow=False)
    result = run(config, "--last-checkpoint", 99, "--processes", 2, "--chunk-size", 25)
    assert result.returncode == 0, result.stderr
    assert_exactly_once(tmp_path, 99)
    fetched = [r.number for r in http.gets() if r.status == 200]
    assert max(n for n in fetched if n is not None) == 99  # nothing past the job's range
    assert http.faults[140] == ["429"]  # never asked for


def test_config_check_and_status_reach_an_http_feed(tmp_path: Path, http: FeedServer) -> None:
    config = write_config(tmp_path, http.url(), follow=False)
    checked = run_indexer("config", "check", "-c", config)
    assert checked.returncode == 0, checked.stderr
    assert f"source.feed: {http.url()} (reached: checkpoint 0 is there)" in checked.stdout
    assert run(config, "--last-checkpoint", 79).returncode == 0
    status = run_indexer("status", "-c", config, "--json")
    assert status.returncode == 0, status.stderr
    [row] = json.loads(status.stdout)["pipelines"]
    assert (row["watermark"], row["feed_latest"], row["lag"]) == (80, 119, 40)
    assert row["lag_seconds"] is not None  # checkpoint 79's timestamp, read over HTTP

    http.refuse_all = 403
    refused = run_indexer("config", "check", "-c", config)
    assert refused.returncode == 2
    assert "source.feed: the feed refused a request: HTTP 403" in refused.stderr


def test_config_check_says_when_a_feed_cannot_be_reached(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"http://127.0.0.1:{free_port()}/feed", follow=False)
    checked = run_indexer("config", "check", "-c", config)
    assert checked.returncode == 2
    [line] = checked.stderr.splitlines()
    assert line.startswith(f"indexer: error: {config}: source.feed: cannot reach the feed: ")
    assert "ClientConnectorError" in line


def test_bad_remote_settings_are_one_line_naming_the_key(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://u:secret@127.0.0.1:99999/feed")
    result = run(config)
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        f"indexer: error: {config}: source.feed is not a valid URL (Port out of range "
        "0-65535): 'http://u:***@127.0.0.1:99999/feed'"
    ]
    config = write_config(tmp_path, "http://127.0.0.1/feed", fetch_concurrency=0)
    result = run(config)
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        f"indexer: error: {config}: source.fetch_concurrency must be >= 1, got 0"
    ]
    config = write_config(tmp_path, "http://127.0.0.1/feed", decode="nowhere:decode")
    result = run(config)
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        f"indexer: error: {config}: source.decode: cannot import 'nowhere': "
        "No module named 'nowhere'"
    ]


def test_the_example_config_documents_every_source_key() -> None:
    """config.example.toml names every ``[source]`` key (set, or commented out with a value)."""
    import re

    import msgspec

    from indexer.cli.source_config import SourceConfig

    text = EXAMPLE.read_text(encoding="utf-8")
    section = text[text.index("[source]") : text.index("[progress]")]
    keys = {field.encode_name for field in msgspec.structs.fields(SourceConfig)}
    documented = set(re.findall(r"^#? ?(\w+) =", section, flags=re.MULTILINE))
    documented |= set(re.findall(r"^#? ?\[source\.(\w+)\]", section, flags=re.MULTILINE))
    assert keys - documented == set()

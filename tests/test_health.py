"""What an operator's tools ask a running ``indexer run`` on its metrics address: ``/healthz``,
``/readyz``, ``/status``, and the series that tell a halted, lagging or stalled indexer from an
idle one (lag in seconds, the newest committed checkpoint's timestamp, the last commit, halted),
and the lag in checkpoints counted from the feed's newest file past a gap.

Each test runs the real command in the background over a real feed directory and asks it over
real HTTP, waiting for conditions with a deadline.
"""

from __future__ import annotations

import json
import platform
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from harness import TIMEOUT, Background, check_metrics_with_promtool, free_port, run_indexer
from prometheus_client.parser import text_string_to_metric_families

import indexer
from indexer import Checkpoint
from indexer.sources import SyntheticSource
from indexer.sources.feed_writer import write_checkpoint_file

#: Retries 50-100 ms apart: a bug halts after its 5 attempts in about 0.35 s, long after the
#: held pipeline's first call started.
FAST = {"initial": 0.05, "max_delay": 0.1}
#: What ``indexer generate`` stamps checkpoint 0 with (then 250 ms apart, +-100 ms).
GENERATED_EPOCH = SyntheticSource().start_timestamp_ms / 1000


def get(port: int, path: str) -> tuple[int, bytes] | None:
    """(status, body) of ``GET path``, or None while nothing answers there."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return int(reply.status), bytes(reply.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())
    except OSError:  # refused, reset, timed out: not serving (yet)
        return None


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> tuple[str, Samples] | None:
    """The exposition at ``/metrics`` and its samples, or None while nothing answers."""
    got = get(port, "/metrics")
    if got is None:
        return None
    status, body = got
    assert status == 200, body
    text = body.decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return text, samples


def of(pipeline: str) -> frozenset[tuple[str, str]]:
    return frozenset({("pipeline", pipeline)})


def write_config(
    directory: Path,
    feed: Path,
    port: int,
    pipelines: dict[str, Any],
    **metrics: Any,
) -> Path:
    config = {
        "source": {"feed": str(feed), "follow": True, "poll_interval": 0.02},
        "progress": {"store": "sqlite:index.db"},
        "metrics": {"address": f"127.0.0.1:{port}", **metrics},
        "logging": {"format": "json", "progress": False},
        "pipelines": pipelines,
    }
    path = directory / "config.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def counting(**options: Any) -> dict[str, Any]:
    """A pipeline counting transactions, committing its watermark every 50 ms (no reducer)."""
    return {
        "worker": "failing_workers:ServiceDownWorker",
        "options": {"down_from": 10**9, **options},
        "progress_interval": 0.05,
    }


def write_feed(feed: Path, numbers: range | list[int], stamp_ms: Any) -> None:
    for n in numbers:
        write_checkpoint_file(feed, Checkpoint(sequence_number=n, timestamp_ms=stamp_ms(n)))


def caught_up(port: int, pipeline: str, watermark: int) -> Samples | None:
    scraped = scrape(port)
    if scraped is None or scraped[1].get(("indexer_watermark", of(pipeline))) != watermark:
        return None
    return scraped[1]


def test_a_run_caught_up_is_healthy_ready_and_says_how_old_its_newest_checkpoint_is(
    tmp_path: Path,
) -> None:
    port = free_port()
    feed = tmp_path / "feed"
    now_ms = int(time.time() * 1000)
    write_feed(feed, range(40), lambda n: now_ms - (40 - n) * 1000)  # the newest 1 s old
    config = write_config(tmp_path, feed, port, {"p": counting()}, ready_max_lag_seconds=600)
    started = time.time()
    run = Background.indexer("run", "-c", config, cwd=tmp_path)
    samples = run.wait_until("watermark 40 on /metrics", lambda: caught_up(port, "p", 40))

    assert get(port, "/healthz") == (200, b"ok\n")
    assert get(port, "/readyz") == (200, b'{"ready": true}\n')
    missing = get(port, "/nothing-here")
    assert missing is not None and missing[0] == 404

    before = time.time()
    text, samples = scrape(port) or pytest.fail("no scrape")
    after = time.time()
    newest = (now_ms - 1000) / 1000  # checkpoint 39's timestamp
    info = frozenset({("version", indexer.__version__), ("python", platform.python_version())})
    assert samples["indexer_build_info", info] == 1
    assert samples["indexer_watermark_timestamp_seconds", of("p")] == newest
    assert before - newest <= samples["indexer_lag_seconds", of("p")] <= after - newest
    assert started <= samples["indexer_last_commit_timestamp_seconds", of("p")] <= after
    assert samples["indexer_pipeline_halted", of("p")] == 0
    assert samples["indexer_lag_checkpoints", of("p")] == 0
    check_metrics_with_promtool(text)

    # /status is what ``indexer status --json`` says of the same config (its lag in seconds
    # taken a moment later: checkpoint 39's age, read from the feed, when each was asked).
    before = time.time()
    answered = get(port, "/status")
    assert answered is not None and answered[0] == 200, answered
    status = run_indexer("status", "-c", config, "--json", cwd=tmp_path)
    after = time.time()
    assert status.returncode == 0, status.stderr
    served, printed = json.loads(answered[1]), json.loads(status.stdout)
    for report in (served, printed):
        (row,) = report["pipelines"]
        assert before - newest - 0.001 <= row.pop("lag_seconds") <= after - newest + 0.001
    assert served == printed
    assert served["pipelines"][0]["watermark"] == 40

    assert run.stop(signal.SIGTERM) == 0, run.describe()
    assert get(port, "/healthz") is None  # the server went with the run


def test_readyz_says_a_pipeline_lags_when_its_newest_checkpoint_is_too_old(
    tmp_path: Path,
) -> None:
    """``indexer generate`` stamps checkpoints from November 2023: years behind."""
    port = free_port()
    feed = tmp_path / "feed"
    generated = run_indexer("generate", "--out", feed, "--count", 30, "--seed", 1, cwd=tmp_path)
    assert generated.returncode == 0, generated.stderr
    config = write_config(tmp_path, feed, port, {"p": counting()}, ready_max_lag_seconds=3600)
    run = Background.indexer("run", "-c", config, cwd=tmp_path)
    samples = run.wait_until("watermark 30 on /metrics", lambda: caught_up(port, "p", 30))

    stamp = samples["indexer_watermark_timestamp_seconds", of("p")]
    assert abs(stamp - (GENERATED_EPOCH + 29 * 0.25)) <= 0.1  # checkpoint 29's, +-100 ms
    assert samples["indexer_lag_seconds", of("p")] > 3600 * 24 * 365
    answered = get(port, "/readyz")
    assert answered is not None and answered[0] == 503, answered
    (reason,) = json.loads(answered[1])["reasons"]
    assert reason["pipeline"] == "p" and reason["reason"] == "lagging"
    assert reason["max_lag_seconds"] == 3600
    assert reason["lag_seconds"] == pytest.approx(time.time() - stamp, abs=60)
    assert json.loads(answered[1])["ready"] is False
    assert get(port, "/healthz") == (200, b"ok\n")  # alive, only not ready
    assert run.stop(signal.SIGTERM) == 0, run.describe()


def test_readyz_says_when_the_feed_cannot_be_read(tmp_path: Path) -> None:
    """A live run whose feed directory is not there yet waits for it, alive but not ready;
    once the directory appears it reads it and is ready."""
    port = free_port()
    feed = tmp_path / "feed"
    config = write_config(tmp_path, feed, port, {"p": counting()})
    run = Background.indexer("run", "-c", config, cwd=tmp_path)

    def not_ready() -> dict[str, Any] | None:
        answered = get(port, "/readyz")
        return json.loads(answered[1]) if answered is not None and answered[0] == 503 else None

    body = run.wait_until("/readyz says the feed is missing", not_ready)
    assert body == {
        "ready": False,
        "reasons": [
            {"reason": "feed unreadable", "error": f"feed directory {feed} does not exist"}
        ],
    }
    assert get(port, "/healthz") == (200, b"ok\n")
    write_feed(feed, range(5), lambda n: int(time.time() * 1000))
    run.wait_until("/readyz ready", lambda: get(port, "/readyz") == (200, b'{"ready": true}\n'))
    run.wait_until("watermark 5 on /metrics", lambda: caught_up(port, "p", 5))
    assert run.stop(signal.SIGTERM) == 0, run.describe()


def test_readyz_and_the_halted_gauge_name_a_halted_pipeline(tmp_path: Path) -> None:
    """Pipeline ``typo`` halts on a bug from checkpoint 10; pipeline ``held`` is in a call that
    waits while a file exists (from its first checkpoint on), which keeps the run (and its
    server) up after the halt: running calls finish before a run ends."""
    port = free_port()
    feed = tmp_path / "feed"  # checkpoints with transactions, which the typo reads
    generated = run_indexer("generate", "--out", feed, "--count", 30, cwd=tmp_path)
    assert generated.returncode == 0, generated.stderr
    hold = tmp_path / "hold"
    hold.touch()
    pipelines = {
        "typo": {
            "worker": "failing_workers:TypoWorker",
            "options": {"typo_from": 10},
            "concurrency": 4,
            "retry": FAST,
        },
        "held": {"worker": "slow_workers:SlowTransactionExtractor"},
    }
    config = write_config(tmp_path, feed, port, pipelines)
    env = {"SLOW_WORKER_HOLD_FROM": "0", "SLOW_WORKER_HOLD_WHILE": str(hold)}
    run = Background.indexer("run", "-c", config, cwd=tmp_path, env=env)

    def not_ready() -> dict[str, Any] | None:
        answered = get(port, "/readyz")
        if answered is None or answered[0] == 200:
            return None
        assert answered[0] == 503, answered
        body: dict[str, Any] = json.loads(answered[1])
        return body

    body = run.wait_until("/readyz 503", not_ready)
    assert body["ready"] is False
    (reason,) = body["reasons"]
    assert reason["pipeline"] == "typo" and reason["reason"] == "halted"
    assert "AttributeError" in reason["error"] and "a bug in the code" in reason["error"]
    _text, samples = scrape(port) or pytest.fail("no scrape")
    assert samples["indexer_pipeline_halted", of("typo")] == 1
    assert samples["indexer_pipeline_halted", of("held")] == 0
    assert get(port, "/healthz") == (200, b"ok\n")
    assert run.returncode is None  # still up: the held call keeps it

    hold.unlink()
    assert run.finish() == 1, run.describe()  # the halt is the run's failure


def test_the_lag_counts_the_checkpoints_past_a_gap_in_the_feed(tmp_path: Path) -> None:
    """Checkpoints 0..19, then 21 and 22 with 20 missing: the reader waits at 20, the feed
    holds 22, so the lag is 3 (20, 21, 22), as ``indexer status`` says; not 0."""
    port = free_port()
    feed = tmp_path / "feed"
    write_feed(feed, range(20), lambda n: 1_700_000_000_000 + n)
    config = write_config(tmp_path, feed, port, {"p": counting()})
    run = Background.indexer("run", "-c", config, cwd=tmp_path)
    run.wait_until("watermark 20 on /metrics", lambda: caught_up(port, "p", 20))
    # The feed poller has looked at the feed (at start) before the run saved anything.
    write_feed(feed, [21, 22], lambda n: 1_700_000_000_000 + n)

    def lag_past_the_gap() -> Samples | None:
        scraped = scrape(port)
        if scraped is None or scraped[1].get(("indexer_lag_checkpoints", of("p"))) == 0:
            return None
        return scraped[1]

    samples = run.wait_until("a lag past the gap", lag_past_the_gap, timeout=TIMEOUT)
    assert samples["indexer_feed_latest_checkpoint", frozenset()] == 22
    assert samples["indexer_lag_checkpoints", of("p")] == 3
    assert samples["indexer_watermark", of("p")] == 20
    status = run_indexer("status", "-c", config, "--json", cwd=tmp_path)
    (row,) = json.loads(status.stdout)["pipelines"]
    assert (row["feed_latest"], row["lag"]) == (22, 3)

    write_feed(feed, [20], lambda n: 1_700_000_000_000 + n)  # the gap fills
    samples = run.wait_until("watermark 23", lambda: caught_up(port, "p", 23))
    assert samples["indexer_lag_checkpoints", of("p")] == 0
    assert samples["indexer_watermark_timestamp_seconds", of("p")] == 1_700_000_000.022
    assert run.stop(signal.SIGTERM) == 0, run.describe()

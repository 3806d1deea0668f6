"""One scrape shows a ``--processes`` job: the parent's address serves the whole job (the
pipeline's real watermark, counters added up, per-process series labelled ``process``), the
children serve nothing, and a real Prometheus server scraping it answers the questions an
operator asks: lag in seconds, the watermark ``indexer status`` shows, the processing rate."""

from __future__ import annotations

import json
import math
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from harness import (
    TRANSACTION_COLUMNS,
    Background,
    check_metrics_with_promtool,
    eventually,
    free_port,
    prometheus_binary,
    run_indexer,
)
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

COUNT = 1200
HOLD_FROM = 800  # checkpoints from here on wait while the hold file exists
CHUNK = 100
DEADLINE = 60.0


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("feed") / "feed"
    done = run_indexer("generate", "--out", directory, "--count", COUNT, "--seed", 5)
    assert done.returncode == 0, done.stderr
    return directory


def write_config(tmp_path: Path, feed: Path, port: int) -> Path:
    db = tmp_path / "index.db"
    path = tmp_path / "cfg.toml"
    path.write_text(
        f"""
[source]
feed = "{feed}"
follow = false

[progress]
store = "sqlite:{db}"

[metrics]
address = "127.0.0.1:{port}"

[logging]
format = "json"
progress = false

[scale]
chunk_size = {CHUNK}
lease_ttl = 2.0

[pipelines.txs]
worker = "slow_workers:SlowTransactionExtractor"
options = {{ delay = 0.04 }}
concurrency = 4

[pipelines.txs.reducer]
class = "reducers.sqlite:SqliteSink"
max_batch_size = 10
max_batch_age = 0.05
options = {{ table = "rows", columns = {TRANSACTION_COLUMNS} }}
"""
    )
    return path


def get(url: str) -> tuple[int, bytes] | None:
    """Status and body of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return None


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value of an exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict[Any, float], name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


class PrometheusServer:
    """A real Prometheus scraping one target every second, asked through its HTTP API."""

    def __init__(self, tmp_path: Path, target: str) -> None:
        binary = prometheus_binary("prometheus")
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: indexer\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        self.port = free_port()
        self.process = Background(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ]
        )
        # Prometheus applies its targets a few seconds after it starts: a job started before
        # its first scrape could be half done by then.
        eventually("prometheus scrapes its target", self._scraping, timeout=DEADLINE)

    def _scraping(self) -> bool:
        assert self.process.returncode is None, self.process.describe()
        answer = get(f"http://127.0.0.1:{self.port}/api/v1/targets")
        if answer is None or answer[0] != 200:
            return False
        targets = json.loads(answer[1])["data"]["activeTargets"]
        return any(not t["lastScrape"].startswith("0001-") for t in targets)

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The instant vector ``expression`` evaluates to now."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expression}
        )
        answer = get(url)
        assert answer is not None and answer[0] == 200, answer
        body = json.loads(answer[1])
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def scalar(self, expression: str) -> float | None:
        """The one value of ``expression``, None while it has none."""
        result = self.query(expression)
        return float(result[0]["value"][1]) if len(result) == 1 else None


def test_one_scrape_of_the_parent_shows_the_whole_job(feed: Path, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, feed, port)
    prometheus = PrometheusServer(tmp_path, f"127.0.0.1:{port}")
    hold = tmp_path / "hold"
    hold.touch()
    job = Background.indexer(
        "run",
        "-c",
        config,
        "--processes",
        2,
        "--last-checkpoint",
        COUNT - 1,
        env={"SLOW_WORKER_HOLD_FROM": str(HOLD_FROM), "SLOW_WORKER_HOLD_WHILE": str(hold)},
    )
    try:
        # While the job works, Prometheus sees the job-wide counter rise.
        def rising() -> float | None:
            assert job.returncode is None, job.describe()
            rate = prometheus.scalar("rate(indexer_checkpoints_processed_total[10s])")
            return rate if rate is not None and rate > 0 else None

        eventually("prometheus sees checkpoints processed", rising, timeout=DEADLINE)

        # Both processes wait at the hold, each at the start of its chunk: the pipeline's
        # watermark is HOLD_FROM whatever chunk each process is in.
        def settled() -> dict[Any, float] | None:
            assert job.returncode is None, job.describe()
            answer = get(f"http://127.0.0.1:{port}/metrics")
            if answer is None or answer[0] != 200:
                return None
            found = samples(answer[1].decode())
            done = value(found, "indexer_checkpoints_processed_total", pipeline="txs")
            positions = {
                value(found, "indexer_process_position", pipeline="txs", process=p)
                for p in ("0", "1")
            }
            # The claim store's numbers are read every second: wait for the last chunk done.
            chunks_done = value(found, "indexer_chunks", pipeline="txs", state="done")
            waiting = done == HOLD_FROM and positions == {800, 900} and chunks_done == 8
            return found if waiting else None

        found = eventually("the job waits at the hold", settled, timeout=DEADLINE)
        assert value(found, "indexer_watermark", pipeline="txs") == HOLD_FROM
        assert value(found, "indexer_lag_checkpoints", pipeline="txs") == COUNT - HOLD_FROM
        for process in ("0", "1"):
            counted = value(
                found,
                "indexer_process_checkpoints_processed_total",
                pipeline="txs",
                process=process,
            )
            assert counted is not None and counted > 0, process  # both did part of the work
        chunks = {
            state: value(found, "indexer_chunks", pipeline="txs", state=state)
            for state in ("done", "leased", "pending")
        }
        assert chunks == {"done": 8, "leased": 2, "pending": 2}
        assert value(found, "indexer_lease_renewal_failures_total", pipeline="txs") == 0
        waited = value(found, "indexer_queue_wait_seconds_count", pipeline="txs")
        assert waited is not None and waited >= HOLD_FROM // 16 - 2  # one in 16, per process
        # The timestamp of checkpoint 799, which a generated feed puts 250 ms apart.
        stamp = value(found, "indexer_watermark_timestamp_seconds", pipeline="txs")
        assert stamp is not None and abs(stamp - (1_700_000_000 + 799 * 0.25)) < 0.2
        answer = get(f"http://127.0.0.1:{port}/metrics")
        assert answer is not None
        check_metrics_with_promtool(answer[1].decode())
        assert get(f"http://127.0.0.1:{port + 1}/metrics") is None  # children serve nothing

        ready = get(f"http://127.0.0.1:{port}/readyz")
        assert ready is not None and ready[0] == 200, ready
        status = run_indexer("status", "-c", config, "--json")
        assert status.returncode == 0, status.stderr
        shown = json.loads(status.stdout)["pipelines"][0]["watermark"]
        assert shown == HOLD_FROM
        answer = get(f"http://127.0.0.1:{port}/status")
        assert answer is not None and json.loads(answer[1])["pipelines"][0]["watermark"] == shown

        # What Prometheus stored agrees with the status.
        eventually(
            "prometheus has the watermark status shows",
            lambda: prometheus.scalar('indexer_watermark{pipeline="txs"}') == shown,
            timeout=DEADLINE,
        )
        lag = prometheus.scalar('indexer_lag_seconds{pipeline="txs"}')
        assert lag is not None and math.isfinite(lag) and lag > 0  # a feed stamped in 2023
    finally:
        hold.unlink(missing_ok=True)
        prometheus.process.kill()
    assert job.finish(DEADLINE) == 0, job.describe()
    assert job.stdout == [
        line for line in job.stdout if line.startswith(f"processed {COUNT} checkpoints in ")
    ]
    assert len(job.stdout) == 1 and "by 2 processes" in job.stdout[0], job.stdout

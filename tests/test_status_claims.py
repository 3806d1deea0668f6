"""``indexer status`` and ``indexer reset`` of a job run with ``--claims``: its progress lives in
the claims database, not in the config file's ``progress.store``, so both take ``--claims`` and
``INDEXER_CLAIMS`` as ``run`` does. Also ``lag_seconds``: now minus the ``timestamp_ms`` of the
newest committed checkpoint, read from the feed.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from harness import INDEXER, command_env, run_indexer
from test_scaleout import write_config

from indexer.sources import SyntheticSource

COUNT = 300  # checkpoints 0..299, three chunks of 100
SEED = 3
PIPELINE = "txs"


def indexer(*args: Any, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``indexer ARGS`` to completion with ``env`` added to the tests' environment."""
    return subprocess.run(
        [str(INDEXER), *map(str, args)],
        env=command_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def status(config: Path, *args: Any, env: dict[str, str] | None = None) -> dict[str, Any]:
    done = indexer("status", "-c", config, "--json", *args, env=env)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def lag_of(n: int) -> Any:
    """``lag_seconds`` when checkpoint ``n`` is the newest committed: now minus its stamp."""
    stamp = SyntheticSource(seed=SEED).checkpoint_at(n).timestamp_ms
    return pytest.approx(time.time() - stamp / 1000, abs=60)


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path]:
    """A chunked job run to its end with ``--claims sqlite:JOB`` whose config file names
    another store (``sqlite:OTHER``): the config, the claims, the other store's file."""
    tmp = tmp_path_factory.mktemp("claims-status")
    feed = tmp / "feed"
    made = run_indexer("generate", "--out", feed, "--count", COUNT, "--seed", SEED)
    assert made.returncode == 0, made.stderr
    other = tmp / "other.db"
    config = write_config(
        tmp / "cfg.toml",
        feed,
        f"sqlite:{other}",
        sink="reducers.sqlite:SqliteSink",
        table="rows",
        delay=0.0,
        pipeline=PIPELINE,
    )
    claims = f"sqlite:{tmp / 'job.db'}"
    ran = run_indexer(
        "run",
        "-c",
        config,
        "--claims",
        claims,
        "--last-checkpoint",
        COUNT - 1,
        "--no-metrics",
        "--no-progress",
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    return config, claims, other


def assert_the_jobs(report: dict[str, Any], claims: str) -> None:
    assert report["store"] == claims and report["store_exists"]
    (row,) = report["pipelines"]
    assert row["pipeline"] == PIPELINE
    assert (row["watermark"], row["feed_latest"], row["lag"]) == (COUNT, COUNT - 1, 0)
    assert row["lag_seconds"] == lag_of(COUNT - 1)
    chunks = row["chunks"]
    assert (chunks["total"], chunks["done"], chunks["held"], chunks["pending"]) == (3, 3, 0, [])


def test_status_with_claims_flag_shows_the_jobs_store(job: tuple[Path, str, Path]) -> None:
    config, claims, _ = job
    assert_the_jobs(status(config, "--claims", claims), claims)


def test_status_with_claims_variable_shows_the_jobs_store(job: tuple[Path, str, Path]) -> None:
    config, claims, _ = job
    assert_the_jobs(status(config, env={"INDEXER_CLAIMS": claims}), claims)


def test_status_table_with_claims(job: tuple[Path, str, Path]) -> None:
    config, claims, _ = job
    done = indexer("status", "-c", config, env={"INDEXER_CLAIMS": claims, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if PIPELINE in line)
    cells = row.replace("│", " ").split()
    assert cells[:4] == [PIPELINE, str(COUNT), str(COUNT - 1), "0"]
    assert float(cells[4]) == lag_of(COUNT - 1)  # lag seconds
    assert cells[5:] == ["0", "3/3", "0"]  # dead letters, chunks done, held


def test_status_without_claims_shows_the_files_store(job: tuple[Path, str, Path]) -> None:
    config, _, other = job
    report = status(config)
    assert report == {
        "store": f"sqlite:{other}",
        "store_exists": False,
        "pipelines": [
            {
                "pipeline": PIPELINE,
                "watermark": None,
                "feed_latest": COUNT - 1,
                "lag": COUNT,
                "lag_seconds": None,
                "dead_letters": [],
                "pruned_below": None,
                "stuck": None,
            }
        ],
    }
    assert not other.exists()  # neither the run nor the look created it


def test_reset_takes_claims(job: tuple[Path, str, Path]) -> None:
    """Without --force a reset says what it would do: in the job's store with --claims (or
    INDEXER_CLAIMS), in the file's without."""
    config, claims, _ = job
    reset = ("reset", "-c", config, "--pipeline", PIPELINE, "--to", 0)
    for args, env in (((*reset, "--claims", claims), None), (reset, {"INDEXER_CLAIMS": claims})):
        done = indexer(*args, env=env)
        assert done.returncode == 2
        assert f"would reset pipeline '{PIPELINE}' from {COUNT} to 0" in done.stderr
        assert "drop its 3 chunk claims" in done.stderr and claims in done.stderr
    done = indexer(*reset)
    assert done.returncode == 2
    assert f"would reset pipeline '{PIPELINE}' from nothing to 0" in done.stderr


def test_lag_seconds_is_none_when_the_checkpoint_is_gone(
    job: tuple[Path, str, Path], tmp_path: Path
) -> None:
    """The newest committed checkpoint's file deleted (a pruned feed): lag in seconds unknown,
    lag in checkpoints still known."""
    config, claims, _ = job
    feed = tmp_path / "feed"
    made = run_indexer("generate", "--out", feed, "--count", COUNT, "--seed", SEED)
    assert made.returncode == 0, made.stderr
    (feed / f"{COUNT - 1}.chk").unlink()
    (row,) = status(config, "--claims", claims, "--feed", feed)["pipelines"]
    assert (row["watermark"], row["feed_latest"], row["lag"]) == (COUNT, COUNT - 2, 0)
    assert row["lag_seconds"] is None

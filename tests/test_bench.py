"""`indexer bench --quick` as a smoke test: every scenario runs and prints its figures.

Timings are never asserted here (the machine is shared and noisy); only that each scenario
produced a positive figure beside a positive reference, in the JSON and in the table.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import workers.transactions
from indexer import executor
from indexer.cli.bench import SCENARIOS, compile_bytecode
from indexer.cli.bench._pipeline_jobs import BARE, SCHEMA_PREFIX

INDEXER = str(Path(sys.executable).with_name("indexer"))


def run_bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [INDEXER, "bench", "--quick", *args],
        capture_output=True,
        text=True,
        timeout=150,
        env={**os.environ, **(env or {})},
        check=False,
    )


async def _bench_schemas(dsn: str) -> set[str]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT schema_name FROM information_schema.schemata"
            " WHERE left(schema_name, length($1)) = $1",
            SCHEMA_PREFIX,
        )
    finally:
        await conn.close()
    return {row[0] for row in rows}


def check_pipeline_results(results: dict[str, dict[str, Any]], database: str) -> None:
    """Both sides wrote every row; peak RSS and wall seconds measured for each."""
    one, rss, two = (results[f"pipeline-{database}{s}"] for s in ("", "-rss", "-2p"))
    assert one["unit"] == two["unit"] == "checkpoints/s"
    assert one["details"]["rows"] > one["details"]["checkpoints"] > 0
    assert all(v > 0 for v in one["details"]["seconds"].values())
    assert set(one["details"]["peak_rss_mb"]) == {"indexer", "bare"}
    assert rss["unit"] == "MB peak RSS" and rss["higher_is_better"] is False
    assert rss["figure"] == pytest.approx(one["details"]["peak_rss_mb"]["indexer"], abs=0.1)
    assert two["details"]["rows"] == one["details"]["rows"]
    assert set(two["details"]["seconds"]) == {"one", "two", "bare_one", "bare_two"}
    assert two["details"]["bare_two_process_speedup"] > 0
    assert two["details"]["chunk_size"] * 16 <= two["details"]["checkpoints"]
    for result in (one, rss, two):
        assert result["figure"] > 0 and result["reference"] > 0, result
        assert result["ratio"] == pytest.approx(result["figure"] / result["reference"], rel=0.01)


#: The scenarios in two halves of about the same time, run side by side (on two cores): a
#: smoke run, whose figures are not asserted, in half the wall-clock time.
HALVES = (
    ("pipeline-sqlite", "pipeline-postgres", "scale-out", "remote", "dispatch", "io-bound",
     "gc-window"),
    ("pipeline-sqlite-2p", "pipeline-postgres-2p", "cohort-tip", "feed", "reducer", "memory",
     "cohorts"),
)  # fmt: skip


def test_the_bench_writes_the_bytecode_an_install_would_have() -> None:
    """Every ``indexer run`` a scenario times imports the framework from bytecode, as from an
    installed package, even where bytecode is never written (PYTHONDONTWRITEBYTECODE)."""
    caches = [
        Path(importlib.util.cache_from_source(m.__file__)) for m in (executor, workers.transactions)
    ]
    for cache in caches:
        cache.unlink(missing_ok=True)
    compile_bytecode()
    assert all(cache.is_file() for cache in caches), caches


def test_the_halves_hold_every_scenario_once() -> None:
    assert sorted(HALVES[0] + HALVES[1]) == sorted(SCENARIOS)


@pytest.mark.slow
@pytest.mark.timeout(170)
def test_quick_bench_runs_every_scenario(tmp_path: Path) -> None:
    dsn = os.environ.get("INDEXER_TEST_POSTGRES_DSN")
    args = ["--json"]
    if dsn:
        args += ["--postgres-dsn", dsn]
        schemas = asyncio.run(_bench_schemas(dsn))
    plot = ["--plot", str(tmp_path / "iobound.png")]
    halves = [
        subprocess.Popen(
            [INDEXER, "bench", "--quick", *args, *(plot if i == 0 else [])]
            + [arg for name in half for arg in ("--scenario", name)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, half in enumerate(HALVES)
    ]
    documents = []
    try:
        for process in halves:
            stdout, stderr = process.communicate(timeout=150)
            assert process.returncode == 0, stderr
            documents.append(json.loads(stdout))
    finally:
        for process in halves:
            if process.poll() is None:
                process.kill()
                process.wait()
    document = documents[0]
    results = {r["scenario"]: r for d in documents for r in d["results"]}
    expected = {
        "dispatch",
        "feed",
        "io-bound",
        "reducer-sqlite",
        "gc-window",
        "memory",
        "scale-out",
        "pipeline-sqlite",
        "pipeline-sqlite-rss",
        "pipeline-sqlite-2p",
        "remote",
        "remote-latency",
        "cohorts",
        "cohort-tip",
    }
    if dsn:
        expected |= {"reducer-postgres", "pipeline-postgres"}
        expected |= {"pipeline-postgres-rss", "pipeline-postgres-2p"}
    # feed-on-disk needs files that can be dropped from the page cache (Linux, not tmpfs).
    assert expected <= set(results) <= expected | {"feed-on-disk"}
    assert {name.split("-")[0] for name in results} >= {n.split("-")[0] for n in SCENARIOS}
    assert results["scale-out"]["details"]["bare_two_process_speedup"] > 0
    # Two pipelines at one pace read the feed once; a newcomer read it apart, then joined.
    assert results["cohorts"]["details"]["read_per_checkpoint_two_together"] <= 1.05
    assert 1.0 <= results["cohort-tip"]["details"]["checkpoints_read_per_feed_checkpoint"] < 2
    check_pipeline_results(results, "sqlite")
    if dsn:
        check_pipeline_results(results, "postgres")
        assert asyncio.run(_bench_schemas(dsn)) <= schemas, "a pipeline schema was left behind"
    for result in results.values():
        assert result["figure"] > 0 and result["reference"] > 0, result
        assert result["ratio"] == pytest.approx(result["figure"] / result["reference"], rel=0.01)
    assert document["machine"]["cpus"] >= 1
    assert set(document["io_bound_sweep"]) == {"1", "4", "16", "64", "256", "1024"}
    assert (tmp_path / "iobound.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_names_each_chosen_scenario_and_unknown_ones_are_usage_errors() -> None:
    done = run_bench("--scenario", "dispatch", "--scenario", "io-bound")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if "cp/s" in line]
    assert [line.split()[1] for line in lines] == ["dispatch", "io-bound"]
    bad = run_bench("--scenario", "nope")
    assert bad.returncode == 2
    assert "nope" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.fast_stand_in  # test_quick_bench_runs_every_scenario runs these too
def test_quick_postgres_pipelines_measure_both_sides_and_drop_their_schemas(
    postgres_dsn: str,
) -> None:
    before = asyncio.run(_bench_schemas(postgres_dsn))
    done = run_bench(
        *("--scenario", "pipeline-postgres", "--scenario", "pipeline-postgres-2p"),
        *("--json", "--postgres-dsn", postgres_dsn),
    )
    assert done.returncode == 0, done.stderr
    results = {r["scenario"]: r for r in json.loads(done.stdout)["results"]}
    assert set(results) == {"pipeline-postgres", "pipeline-postgres-rss", "pipeline-postgres-2p"}
    check_pipeline_results(results, "postgres")
    assert asyncio.run(_bench_schemas(postgres_dsn)) <= before, "a schema was left behind"


def test_postgres_pipelines_without_a_dsn_give_no_result() -> None:
    done = run_bench(
        "--scenario", "pipeline-postgres", "--json", env={"INDEXER_BENCH_POSTGRES_DSN": ""}
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["results"] == []


def test_the_bare_pipeline_loop_imports_nothing_of_the_framework_but_the_checkpoint(
    tmp_path: Path,
) -> None:
    """It runs as a script (``-P``: not from the bench directory), so not even ``indexer.cli``."""
    from indexer.cli.bench._common import write_bench_feed

    write_bench_feed(tmp_path / "feed", 3)
    db = tmp_path / "bare.db"
    command = [sys.executable, "-P", "-X", "importtime", str(BARE), "sqlite", str(db)]
    done = subprocess.run(
        [*command, str(tmp_path / "feed"), "0", "3"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert {m for m in imported if m.split(".")[0] == "indexer"} == {
        "indexer",
        "indexer._lazy",
        "indexer.checkpoint",
        "indexer.errors",
    }
    assert "asyncpg" not in imported and "asyncio" not in imported

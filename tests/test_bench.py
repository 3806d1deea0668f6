"""`indexer bench --quick` as a smoke test: every scenario runs and prints its figures.

Timings are never asserted here (the machine is shared and noisy); only that each scenario
produced a positive figure beside a positive reference, in the JSON and in the table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from indexer.cli.bench import SCENARIOS

INDEXER = str(Path(sys.executable).with_name("indexer"))


def run_bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [INDEXER, "bench", "--quick", *args],
        capture_output=True,
        text=True,
        timeout=110,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.mark.slow
@pytest.mark.timeout(115)
def test_quick_bench_runs_every_scenario(tmp_path: Path) -> None:
    dsn = os.environ.get("INDEXER_TEST_POSTGRES_DSN")
    args = ["--json", "--plot", str(tmp_path / "iobound.png")]
    if dsn:
        args += ["--postgres-dsn", dsn]
    done = run_bench(*args)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    results = {r["scenario"]: r for r in document["results"]}
    expected = {
        "dispatch",
        "feed",
        "io-bound",
        "reducer-sqlite",
        "gc-window",
        "memory",
        "scale-out",
    }
    if dsn:
        expected.add("reducer-postgres")
    # feed-on-disk needs files that can be dropped from the page cache (Linux, not tmpfs).
    assert expected <= set(results) <= expected | {"feed-on-disk"}
    assert {name.split("-")[0] for name in results} >= {n.split("-")[0] for n in SCENARIOS}
    assert results["scale-out"]["details"]["bare_two_process_speedup"] > 0
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

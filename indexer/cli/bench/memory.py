"""memory: peak resident memory of a run over N and 10 N checkpoints (it must stay flat)."""

from __future__ import annotations

import json
import subprocess
import sys

from ._common import Result

LIMIT_MB = 250

_PROGRAM = """
import asyncio, json, resource, sys
from indexer.executor import IndexerExecutor
from indexer.pipeline import WorkerPool
from indexer.progress import MemoryProgressStore
from indexer._loop import run_on
from indexer.cli.bench._common import Noop, RenumberedSource, templates
templates()
count = int(sys.argv[1])
executor = IndexerExecutor(MemoryProgressStore(), handle_signals=False)
executor.register(WorkerPool(Noop(), concurrency=64))
result = run_on(sys.argv[2], executor.run(RenumberedSource(count)))
assert result["noop"] == count, result
print(json.dumps({"peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def peak_mb(count: int, event_loop: str = "auto") -> float:
    """Peak RSS of a fresh process that runs ``count`` checkpoints through a pipeline."""
    done = subprocess.run(
        [sys.executable, "-c", _PROGRAM, str(count), event_loop],
        capture_output=True,
        text=True,
        check=True,
        env={"INDEXER_LOG_LEVEL": "warning", **__import__("os").environ},
    )
    return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_kb"]) / 1024


def run(quick: bool, event_loop: str = "auto") -> list[Result]:
    small, large = (20_000, 200_000) if quick else (100_000, 1_000_000)
    small_mb, large_mb = peak_mb(small, event_loop), peak_mb(large, event_loop)
    return [
        Result(
            "memory",
            figure=large_mb,
            reference=small_mb,
            unit="MB peak RSS",
            bar=1.2,
            higher_is_better=False,
            limit=LIMIT_MB,
            details={
                "checkpoints": [small, large],
                "peak_mb": [round(small_mb, 1), round(large_mb, 1)],
            },
        )
    ]

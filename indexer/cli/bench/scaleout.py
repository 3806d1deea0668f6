"""scale-out: a CPU-bound worker (~1 ms of pure Python per checkpoint) run by ``indexer run``
in one process and by ``indexer run --processes 2`` over the same feed; the figure is the
speedup (processes 2 throughput over one process's), whose bar is 1.7 on two cores.

Both are real ``indexer`` commands timed from start to exit (interpreter start-up included),
alternating, best of the rounds; both keep their progress in SQLite. Beside them, the speedup
two bare processes get on the same work shows what the machine itself allows.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ...checkpoint import Checkpoint
from ...worker import Worker
from ._common import Result, cpu_count, write_bench_feed

#: Iterations of the busy loop: about 1 ms of pure Python on a 2020s core.
ITERATIONS = 12_000


def spin(iterations: int) -> int:
    """Pure-Python work that holds the GIL, as decoding, hashing or parsing in Python would."""
    x = 0
    for i in range(iterations):
        x = (x * 31 + i) & 0xFFFFFFFF
    return x


class CpuBound(Worker[Checkpoint, None]):
    """Spends ``iterations`` of :func:`spin` on every checkpoint and commits nothing."""

    name = "cpu"

    def __init__(self, iterations: int = ITERATIONS) -> None:
        self.iterations = iterations

    async def process_checkpoint(self, checkpoint: Checkpoint) -> None:
        spin(self.iterations)


def _config(directory: Path, feed: Path, name: str, chunk_size: int) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(
        f"""[source]
feed = "{feed}"
follow = false

[progress]
store = "sqlite:{directory / name}.db"

[scale]
chunk_size = {chunk_size}
lease_ttl = 10.0

[metrics]
enabled = false

[pipelines.cpu]
worker = "indexer.cli.bench.scaleout:CpuBound"
concurrency = 2
"""
    )
    return path


def _timed_run(config: Path, last: int, processes: int, event_loop: str = "auto") -> float:
    (config.parent / f"{config.stem}.db").unlink(missing_ok=True)  # every round from scratch
    command = [sys.executable, "-m", "indexer", "run", "-c", str(config)]
    command += ["--last-checkpoint", str(last), "--no-progress", "--log-level", "warning"]
    command += ["--processes", str(processes), "--event-loop", event_loop]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"scale-out run failed: {done.stderr.strip()[-500:]}")
    return seconds


def per_checkpoint_ms(iterations: int = ITERATIONS, rounds: int = 200) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        spin(iterations)
    return (time.perf_counter() - started) / rounds * 1000


def _spin_many(count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        spin(ITERATIONS)
    return time.perf_counter() - started


def bare_speedup(count: int) -> float:
    """What the machine gives two processes doing the same work without any framework: the
    ceiling for the scale-out figure (below 2 when the cores are shared or throttled)."""
    started = time.perf_counter()
    _spin_many(count)
    one = time.perf_counter() - started
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_spin_many, [1, 1])  # start-up outside the timing
        started = time.perf_counter()
        pool.map(_spin_many, [count // 2, count - count // 2])
        two = time.perf_counter() - started
    return one / two


def run(quick: bool, event_loop: str = "auto") -> list[Result]:
    count = 800 if quick else 10_000
    rounds = 1 if quick else 2
    chunk_size = count // 32
    with tempfile.TemporaryDirectory(prefix="indexer-bench-") as tmp:
        directory = Path(tmp)
        feed = directory / "feed"
        write_bench_feed(feed, count)
        one = _config(directory, feed, "one", chunk_size)
        two = _config(directory, feed, "two", chunk_size)
        single = double = float("inf")
        for _ in range(rounds):
            single = min(single, _timed_run(one, count - 1, 1, event_loop))
            double = min(double, _timed_run(two, count - 1, 2, event_loop))
        machine = bare_speedup(count // 2)
    return [
        Result(
            "scale-out",
            figure=count / double,
            reference=count / single,
            unit="checkpoints/s",
            bar=1.7 if cpu_count() >= 2 else None,
            details={
                "checkpoints": count,
                "worker_ms": round(per_checkpoint_ms(), 2),
                "bare_two_process_speedup": round(machine, 2),
                "processes": 2,
                "chunk_size": chunk_size,
                "cpus": cpu_count(),
            },
        )
    ]

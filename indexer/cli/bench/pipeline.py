"""pipeline-*: a real job end to end. ``indexer run`` with ``workers:TransactionExtractor`` and a
sink sharing the progress store's database (exactly once, 500 checkpoints per commit) over
``.chk`` files, against a bare loop doing the same job in one process with the same
durability (``_bare_pipeline``: read, decode, one tuple per transaction, rows and watermark
in one transaction per 500 checkpoints). Both are subprocesses timed from start to exit,
interpreter start-up included, alternating, best of the rounds, each on a fresh database.

- pipeline-sqlite: SqliteSink on the SQLite store; and pipeline-sqlite-rss, the peak RSS of
  ``indexer run`` beside the bare loop's.
- pipeline-postgres (with a DSN): PostgresSink on the PostgreSQL store, a fresh schema per run
  (dropped after), against a bare asyncpg COPY loop; and pipeline-postgres-rss.
- pipeline-sqlite-2p, pipeline-postgres-2p: ``indexer run --processes 2`` (16 chunks) against
  one ``indexer run``; beside them, the speedup two bare loops get on the two halves of the
  range at once into the same database (what the database's writer allows).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from ._bare_pipeline import BATCH
from ._common import Result, best_interleaved, cpu_count, write_bench_feed
from ._pipeline_jobs import CHUNKS, CONCURRENCY, Backend, PostgresJob, Run, SqliteJob


def best_runs(rounds: int, sides: dict[str, Callable[[], Run]]) -> dict[str, Run]:
    """Each side's fastest run over ``rounds`` interleaved rounds, with its largest peak RSS."""
    best: dict[str, Run] = {}
    peaks: dict[str, float] = {}

    def timing(name: str, side: Callable[[], Run]) -> Callable[[], float]:
        def run() -> float:
            done = side()
            if name not in best or done.seconds < best[name].seconds:
                best[name] = done
            peaks[name] = max(peaks.get(name, 0.0), done.peak_mb)
            return done.seconds

        return run

    best_interleaved(rounds, {name: timing(name, side) for name, side in sides.items()})
    return {name: best[name]._replace(peak_mb=peaks[name]) for name in sides}


def end_to_end(name: str, job: Backend, count: int, rounds: int, bare: str) -> list[Result]:
    runs = best_runs(rounds, {"indexer": lambda: job.indexer(1), "bare": lambda: job.bare(1)})
    framework, reference = runs["indexer"], runs["bare"]
    rss_ratio = framework.peak_mb / reference.peak_mb
    details = {
        "checkpoints": count,
        "rows": framework.rows,
        "checkpoints_per_batch": BATCH,
        "concurrency": CONCURRENCY,
        "rounds": rounds,
        "reference": f"bare loop: read + decode + {bare} + watermark upsert per batch",
        "seconds": {"indexer": round(framework.seconds, 3), "bare": round(reference.seconds, 3)},
        "peak_rss_mb": {
            "indexer": round(framework.peak_mb, 1),
            "bare": round(reference.peak_mb, 1),
        },
        "peak_rss_ratio": round(rss_ratio, 2),
    }
    return [
        Result.throughput(
            name, count, framework.seconds, reference.seconds, bar=0.9, details=details
        ),
        Result(
            f"{name}-rss",
            figure=framework.peak_mb,
            reference=reference.peak_mb,
            unit="MB peak RSS",
            bar=1.5,
            higher_is_better=False,
            details={"checkpoints": count, "rows": framework.rows},
        ),
    ]


def two_processes(name: str, job: Backend, count: int, rounds: int, bar: float) -> list[Result]:
    runs = best_runs(
        rounds,
        {
            "one": lambda: job.indexer(1),
            "two": lambda: job.indexer(2),
            "bare_one": lambda: job.bare(1),
            "bare_two": lambda: job.bare(2),
        },
    )
    seconds = {side: round(done.seconds, 3) for side, done in runs.items()}
    details = {
        "checkpoints": count,
        "rows": runs["one"].rows,
        "processes": 2,
        "chunk_size": max(1, count // CHUNKS),
        "checkpoints_per_batch": BATCH,
        "rounds": rounds,
        "seconds": seconds,
        "bare_two_process_speedup": round(runs["bare_one"].seconds / runs["bare_two"].seconds, 2),
        "cpus": cpu_count(),
    }
    one, two = runs["one"].seconds, runs["two"].seconds
    return [
        Result.throughput(
            name, count, two, one, bar=bar if cpu_count() >= 2 else None, details=details
        )
    ]


def _sizes(quick: bool) -> tuple[int, int]:
    """Checkpoints and rounds."""
    return (5_000, 1) if quick else (100_000, 3)


def _feed(directory: Path, count: int) -> Path:
    feed = directory / "feed"
    write_bench_feed(feed, count)
    os.sync()  # no writeback of the new files while a side is timed
    return feed


def run_sqlite(quick: bool, processes: int, event_loop: str = "auto") -> list[Result]:
    count, rounds = _sizes(quick)
    with tempfile.TemporaryDirectory(prefix="indexer-bench-") as tmp:
        directory = Path(tmp)
        job = SqliteJob(directory, _feed(directory, count), count, event_loop)
        if processes == 2:
            return two_processes("pipeline-sqlite-2p", job, count, rounds, bar=1.3)
        return end_to_end("pipeline-sqlite", job, count, rounds, "executemany")


def run_postgres(
    quick: bool, dsn: str | None, processes: int, event_loop: str = "auto"
) -> list[Result]:
    if not dsn:
        return []  # as the reducer scenario: PostgreSQL only with a DSN
    count, rounds = _sizes(quick)
    with tempfile.TemporaryDirectory(prefix="indexer-bench-") as tmp, asyncio.Runner() as runner:
        directory = Path(tmp)
        job = PostgresJob(runner, dsn, directory, _feed(directory, count), count, event_loop)
        try:
            if processes == 2:
                return two_processes("pipeline-postgres-2p", job, count, rounds, bar=1.6)
            return end_to_end("pipeline-postgres", job, count, rounds, "asyncpg COPY")
        finally:
            job.close()

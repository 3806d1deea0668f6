"""remote: a full ``indexer run`` over a feed served over HTTP on 127.0.0.1 (a server process of
its own, ``_http_feed_server``), no-op worker, against a bare aiohttp loop fetching with the same
concurrency (a sliding window of requests, awaited in order) and decoding in order; and
remote-latency: the same with 20 ms added to every response, against concurrency / latency."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

from ..._loop import run_on
from ...checkpoint import Checkpoint, CheckpointDecoder
from ..config import load_config
from ..run import run_indexer
from ._common import Result, best_interleaved, write_bench_feed

#: Requests in flight on both sides (``source.fetch_concurrency``'s default).
CONCURRENCY = 64
#: Seconds the latency variant adds to every response.
LATENCY = 0.020


class FeedServerProcess:
    """``_http_feed_server`` over ``directory``'s first ``count`` files, ``delay`` seconds a
    response; its URL once started."""

    def __init__(self, directory: Path, count: int, delay: float) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "indexer.cli.bench._http_feed_server",
                str(directory),
                str(count),
                str(delay),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.url = f"http://127.0.0.1:{int(self.process.stdout.readline())}/feed"

    def __enter__(self) -> FeedServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()  # the server stops when its input ends
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def bare_fetch_decode(url: str, count: int) -> None:
    """What a client does at best: up to ``CONCURRENCY`` GETs in flight in a sliding window,
    each body awaited in order and decoded."""
    import aiohttp

    decoder: CheckpointDecoder[Checkpoint] = CheckpointDecoder()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def get(n: int) -> bytes:
            async with session.get(f"{url}/{n}.chk") as response:
                response.raise_for_status()
                return await response.read()

        window = deque(asyncio.create_task(get(n)) for n in range(min(CONCURRENCY, count)))
        following = len(window)
        for n in range(count):
            data = await window.popleft()
            if following < count:
                window.append(asyncio.create_task(get(following)))
                following += 1
            decoder.decode(data, sequence_number=n, origin="")


def bare_run(url: str, count: int, event_loop: str) -> float:
    started = time.perf_counter()
    run_on(event_loop, bare_fetch_decode(url, count))
    return time.perf_counter() - started


def indexer_run(url: str, count: int, event_loop: str) -> float:
    config = load_config(
        None,
        {
            "source.feed": url,
            "source.follow": False,
            "source.fetch_concurrency": CONCURRENCY,
            "progress.store": "memory",
            "metrics.enabled": False,
            "logging.progress": False,
            "run.last_checkpoint": count - 1,
            "run.event_loop": event_loop,
            "pipelines": {"noop": {"worker": "indexer.cli.bench._common:Noop", "concurrency": 16}},
        },
    )
    started = time.perf_counter()
    run_indexer(config)
    return time.perf_counter() - started


def run(quick: bool, event_loop: str = "auto") -> list[Result]:
    count = 1_500 if quick else 50_000  # quick: the scenario works, not a figure to quote
    delayed = 800 if quick else 20_000
    rounds = 1 if quick else 3
    details = {"concurrency": CONCURRENCY, "worker": "no-op", "server": "a process of its own"}
    with tempfile.TemporaryDirectory(prefix="indexer-bench-") as tmp:
        feed = Path(tmp) / "feed"
        write_bench_feed(feed, count)
        with FeedServerProcess(feed, count, 0.0) as server:
            warm = min(count // 4, 2_000)
            bare_run(server.url, warm, event_loop)  # warm both sides up
            indexer_run(server.url, warm, event_loop)
            best = best_interleaved(
                rounds,
                {
                    "bare": lambda: bare_run(server.url, count, event_loop),
                    "indexer": lambda: indexer_run(server.url, count, event_loop),
                },
            )
        with FeedServerProcess(feed, delayed, LATENCY) as server:
            latency = min(indexer_run(server.url, delayed, event_loop) for _ in range(rounds))
    return [
        Result.throughput(
            "remote",
            count,
            best["indexer"],
            best["bare"],
            bar=0.8,
            details={**details, "files": count, "reference": "bare aiohttp loop"},
        ),
        Result(
            "remote-latency",
            figure=delayed / latency,
            reference=CONCURRENCY / LATENCY,
            unit="checkpoints/s",
            bar=0.8,
            details={
                **details,
                "files": delayed,
                "latency_ms": LATENCY * 1000,
                "reference": "concurrency / latency",
            },
        ),
    ]

"""Remote feeds from code: ``HttpSource`` against a real HTTP server on 127.0.0.1 with faults
injected (each retried, counted by reason, logged once per streak), the ordered prefetch and its
bounds, compressed and JSON files, a decode hook, and the feed's newest checkpoint by probing."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zstandard
from feed_server import FeedServer
from structlog.testing import capture_logs

from indexer.checkpoint import Checkpoint, CheckpointDecoder, encode_checkpoint
from indexer.errors import ConfigurationError
from indexer.sources import (
    FeedRequestRefused,
    HttpSource,
    ObjectStoreSource,
    SyntheticSource,
    write_feed,
)
from indexer.sources._prefetch import OrderedPrefetcher
from indexer.stats import FeedStats

#: Small timeouts and backoff: a test's faults cost milliseconds, not the real minutes.
FAST = {
    "connect_timeout": 1.0,
    "request_timeout": 1.0,
    "slow_request": 0.3,
    "retry_initial": 0.01,
    "retry_max_delay": 0.05,
    "poll_interval": 0.02,
}


@pytest.fixture
def feed(tmp_path: Path) -> Path:
    directory = tmp_path / "feed"
    asyncio.run(write_feed(SyntheticSource(), directory, count=60))
    return directory


@pytest.fixture
def http(feed: Path) -> Iterator[FeedServer]:
    with FeedServer(feed) as server:
        yield server


async def read_all(source: Any, start: int = 0, last: int | None = None) -> list[int]:
    numbers: list[int] = []
    batches = (
        source.stream(start, CheckpointDecoder())
        if last is None
        else source.stream_to(start, last, CheckpointDecoder())
    )
    try:
        async for batch in batches:
            numbers += [checkpoint.sequence_number for checkpoint, _ in batch]
    finally:
        await batches.aclose()
        await source.close()
    return numbers


# -- faults over HTTP --------------------------------------------------------------------------


async def test_every_transient_fault_is_retried_counted_by_reason_and_logged_once(
    http: FeedServer,
) -> None:
    http.faults = {
        5: ["500", "503", "500"],
        9: ["429"],
        12: ["408"],
        20: ["reset"],
        25: ["truncate"],
        30: ["slow"],
        35: ["garbage"],
        40: ["late"],
    }
    http.slow_seconds, http.late_seconds = 1.5, 0.5
    stats = FeedStats()
    source = HttpSource(http.url(), follow=False, stats=stats, **FAST)
    with capture_logs() as logs:
        assert await read_all(source) == list(range(60))
    assert stats.fetch_retries == {
        "connect": 0,
        "timeout": 1,
        "http_408": 1,
        "http_429": 1,
        "http_5xx": 3,
        "short_body": 2,
        "decode": 1,
    }
    # Retry-After: 1 was honoured, over a backoff of at most 0.05 s.
    first, second = http.gets(9)[:2]
    assert second.at - first.at >= 0.95
    failing = [line for line in logs if line["event"].startswith("feed requests failing")]
    # One line when a streak of a reason starts, not one per attempt: the three 5xx are one.
    reasons = [line["reason"] for line in failing]
    assert sorted(reasons) == sorted(
        ["http_5xx", "http_429", "http_408", "short_body", "timeout", "decode"]
    )
    slow = [line for line in logs if line["event"] == "slow feed request"]
    assert len(slow) >= 1  # the "late" answer (0.5 s, over slow_request = 0.3)


async def test_a_refused_request_halts_naming_the_url_with_its_password_masked(
    http: FeedServer,
) -> None:
    http.faults = {3: ["403"]}
    source = HttpSource(http.url("reader:hunter2@"), follow=False, **FAST)
    delivered: list[int] = []
    with pytest.raises(FeedRequestRefused) as refused:
        batches = source.stream(0, CheckpointDecoder())
        try:
            async for batch in batches:
                delivered += [c.sequence_number for c, _ in batch]
        finally:
            await batches.aclose()
            await source.close()
    message = str(refused.value)
    assert "HTTP 403" in message and "reader:***@127.0.0.1" in message and "3.chk" in message
    assert "hunter2" not in message and "\n" not in message
    assert delivered == [0, 1, 2]  # everything before the refused file was handed over
    assert http.gets(3)[0].authorization is not None  # the URL's credentials were sent


async def test_a_missing_file_is_polled_with_follow_until_it_appears(
    http: FeedServer, feed: Path
) -> None:
    source = HttpSource(http.url(), follow=True, **FAST)
    reading = asyncio.ensure_future(read_all(source, 0, 79))
    await asyncio.to_thread(http.wait_until, "second poll of 60", lambda: len(http.gets(60)) >= 3)
    # At the tip only the next file is asked for, not the whole window again and again.
    later = [r for r in http.gets() if r.number is not None and r.number > 60]
    assert len(later) <= source.fetch_concurrency
    await write_feed(SyntheticSource(), feed, start=60, count=20)
    assert await asyncio.wait_for(reading, 30) == list(range(80))


async def test_without_follow_the_stream_ends_at_the_first_missing_file(
    http: FeedServer,
) -> None:
    source = HttpSource(http.url(), follow=False, **FAST)
    assert await read_all(source, 50) == list(range(50, 60))


async def test_a_chunk_requests_only_its_own_range(http: FeedServer) -> None:
    source = HttpSource(http.url(), follow=False, fetch_concurrency=16, **FAST)
    assert await read_all(source, 20, 29) == list(range(20, 30))
    assert {r.number for r in http.gets()} == set(range(20, 30))


async def test_the_newest_checkpoint_is_found_by_a_few_probes(http: FeedServer) -> None:
    source = HttpSource(http.url(), follow=False, **FAST)
    try:
        assert await source.latest_sequence_number() == 59
        probes = len(http.requests)
        assert probes <= 16  # 0, 1, 2, 4, ..., 64 then a bisection: not 60 requests
        assert await source.latest_sequence_number() == 59
    finally:
        await source.close()
    assert len(http.requests) - probes <= 3  # from what is known: one look past it


async def test_a_feed_with_nothing_is_unknown_not_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with FeedServer(tmp_path / "empty") as server:
        source = HttpSource(server.url(), follow=False, **FAST)
        try:
            assert await source.latest_sequence_number() is None
            assert await source.check_reachable(0) == "reached: checkpoint 0 is not there (yet)"
        finally:
            await source.close()


def test_bad_settings_are_configuration_errors_naming_their_key() -> None:
    with pytest.raises(ConfigurationError, match="feed is not an http"):
        HttpSource("ftp://host/feed")
    with pytest.raises(ConfigurationError, match="u:\\*\\*\\*@"):
        HttpSource("http://u:secret@host:99999/feed")
    with pytest.raises(ConfigurationError, match="file_template must contain"):
        HttpSource("http://host/feed", file_template="feed.chk")
    with pytest.raises(ConfigurationError, match="fetch_concurrency must be >= 1"):
        HttpSource("http://host/feed", fetch_concurrency=0)
    with pytest.raises(ConfigurationError, match="request_timeout must be > 0"):
        HttpSource("http://host/feed", request_timeout=0)


# -- file names, compression, codecs, a decode hook ---------------------------------------------


@pytest.mark.parametrize(
    ("url", "template", "n", "expected"),
    [
        ("http://h:80/feed/", "{seq}.chk", 7, "http://h/feed/7.chk"),
        ("https://h", "{seq:08d}.chk.zst", 12, "https://h/00000012.chk.zst"),
        (
            "http://u:p%40x@h:8080/a",
            "x y/{seq:>3}.chk",
            7,
            "http://u:p%40x@h:8080/a/x%20y/%20%207.chk",
        ),
        ("http://[::1]:8080/feed", "ü-{seq}~_.chk", 5, "http://[::1]:8080/feed/%C3%BC-5~_.chk"),
    ],
)
def test_a_request_goes_to_the_feed_url_and_the_file_name_quoted(
    url: str, template: str, n: int, expected: str
) -> None:
    source = HttpSource(url, file_template=template)
    request = source._request_url(n)
    assert str(request) == expected
    assert request.user == (None if "@" not in url else "u")
    assert request.password == (None if "@" not in url else "p@x")


def checkpoints(count: int) -> list[Checkpoint]:
    source = SyntheticSource()
    return [source.checkpoint_at(n) for n in range(count)]


async def test_compressed_files_over_http_are_decompressed_by_suffix(tmp_path: Path) -> None:
    directory = tmp_path / "zst"
    directory.mkdir()
    compressor = zstandard.ZstdCompressor()
    for checkpoint in checkpoints(30):
        name = f"{checkpoint.sequence_number:08d}.chk.zst"
        (directory / name).write_bytes(compressor.compress(encode_checkpoint(checkpoint)))
    with FeedServer(directory) as server:
        source = HttpSource(server.url(), file_template="{seq:08d}.chk.zst", follow=False, **FAST)
        assert await read_all(source) == list(range(30))


def bare_dict(data: bytes) -> dict[str, Any]:
    """A decode hook: a foreign format (here: a JSON object per file, under "checkpoint")."""
    return msgspec.json.decode(data)["checkpoint"]


@pytest.mark.parametrize("form", ["json", "hook", "gzip"])
async def test_json_files_and_a_decode_hook_through_a_file_url(tmp_path: Path, form: str) -> None:
    import gzip

    directory = tmp_path / form
    directory.mkdir()
    suffix = {"json": "json", "hook": "wrapped", "gzip": "chk.gz"}[form]
    for checkpoint in checkpoints(20):
        if form == "json":
            data = msgspec.json.encode(checkpoint)
        elif form == "hook":
            data = msgspec.json.encode({"checkpoint": checkpoint, "signature": "..."})
        else:
            data = gzip.compress(encode_checkpoint(checkpoint))
        (directory / f"{checkpoint.sequence_number}.{suffix}").write_bytes(data)
    source = ObjectStoreSource(
        directory.as_uri(),
        file_template=f"{{seq}}.{suffix}",
        codec="json" if form == "json" else "msgpack",
        decode=bare_dict if form == "hook" else None,
        follow=False,
        **FAST,
    )
    assert await read_all(source) == list(range(20))


async def test_a_file_that_never_decodes_is_retried_and_said_why(tmp_path: Path) -> None:
    directory = tmp_path / "bad"
    directory.mkdir()
    (directory / "0.json").write_bytes(b'{"sequence_number": 1, "timestamp_ms": 0}')
    stats = FeedStats()
    source = ObjectStoreSource(
        directory.as_uri(), file_template="{seq}.json", codec="json", stats=stats, **FAST
    )
    with capture_logs() as logs, pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await read_all(source)
    assert stats.fetch_retries["decode"] >= 3
    [line] = [str(entry) for entry in logs if "failing" in entry["event"]]
    assert "holds checkpoint 1, expected 0" in line and "0.json" in line


# -- the ordered prefetch -------------------------------------------------------------------------


class FakeFeed:
    """Items ``0 .. produced - 1``, each fetched after a random delay; records concurrency."""

    def __init__(self, produced: int, size: int = 100) -> None:
        self.produced = produced
        self.size = size
        self.running = 0
        self.most_running = 0
        self.asked: list[int] = []
        self.fail_at: int | None = None

    async def fetch(self, n: int) -> tuple[int, int] | None:
        self.asked.append(n)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(random.random() / 1000)
        finally:
            self.running -= 1
        if n == self.fail_at:
            raise RuntimeError(f"item {n} failed")
        return (n, self.size) if n < self.produced else None


def prefetcher(fake: FakeFeed, start: int = 0, stop: int | None = None, **options: Any) -> Any:
    settings: dict[str, Any] = {
        "concurrency": 8,
        "max_bytes": 10_000,
        "batch_size": 16,
        "follow": False,
        "poll_interval": 0.01,
    }
    return OrderedPrefetcher(fake.fetch, start, stop, **{**settings, **options})


async def collect(batches: AsyncIterator[list[tuple[int, int]]]) -> list[int]:
    return [item for batch in [b async for b in batches] for item, _ in batch]


async def test_prefetch_delivers_in_order_within_its_concurrency() -> None:
    fake = FakeFeed(500)
    assert await collect(aiter(prefetcher(fake))) == list(range(500))
    assert fake.most_running <= 8
    assert fake.most_running >= 4  # requests did run side by side


async def test_prefetch_stops_at_stop_and_at_the_first_missing_item() -> None:
    fake = FakeFeed(500)
    assert await collect(aiter(prefetcher(fake, 100, 150))) == list(range(100, 150))
    assert max(fake.asked) == 149 and min(fake.asked) == 100
    short = FakeFeed(40)
    assert await collect(aiter(prefetcher(short))) == list(range(40))


async def test_prefetch_holds_at_most_its_byte_cap_for_a_consumer_that_waits() -> None:
    fake = FakeFeed(10_000)
    fetching = prefetcher(fake, max_bytes=2_000, concurrency=4)
    batches = aiter(fetching)
    first = await anext(batches)
    await asyncio.sleep(0.05)  # the consumer is busy: fetching goes on only up to the cap
    assert fetching.buffered_bytes <= 2_000 + 4 * fake.size
    assert len(fake.asked) <= len(first) + 2_000 // fake.size + 4
    await batches.aclose()
    assert fetching.running == 0  # nothing left running once the consumer is gone


async def test_prefetch_hands_over_the_items_before_a_failure_then_raises_it() -> None:
    fake = FakeFeed(100)
    fake.fail_at = 30
    got: list[int] = []
    with pytest.raises(RuntimeError, match="item 30 failed"):
        async for batch in prefetcher(fake):
            got += [item for item, _ in batch]
    assert got == list(range(30))


async def test_prefetch_with_follow_polls_only_the_tip() -> None:
    fake = FakeFeed(50)
    batches = aiter(prefetcher(fake, stop=70, follow=True, poll_interval=0.005))
    got = [item for item, _ in await anext(batches)]
    while got[-1] < 49:
        got += [item for item, _ in await anext(batches)]
    waiting = asyncio.ensure_future(anext(batches))
    await asyncio.sleep(0.1)  # about 20 polls
    past_tip = [n for n in fake.asked if n > 50]
    assert len(past_tip) <= 8  # the window's one burst, then only the tip is asked for
    assert fake.asked.count(50) >= 5
    fake.produced = 70
    got += [item for item, _ in await waiting]
    got += await collect(batches)
    assert got == list(range(70))

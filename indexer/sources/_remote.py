"""What every remote feed shares (HTTP, object stores): files fetched by number ahead of the
reader and delivered in order (``OrderedPrefetcher``), each fetch under the fault rules
(``FetchFaults``), decoded as the feed says (``PayloadDecoder``), and the feed's newest file
found by probing forward from what is known."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from .._dsn import mask_dsn
from .._log import Logger
from ..checkpoint import CheckpointDecoder
from ..errors import CheckpointDecodeError, ConfigurationError
from ..retry import RetryPolicy
from ..stats import FeedStats
from ._base import CheckpointSource, SourcedBatch
from ._fetch_faults import FeedRequestRefused, FetchFaults, TransientFetchError
from ._payload import Codec, DecodeHook, PayloadDecoder, check_file_template
from ._prefetch import OrderedPrefetcher, check_prefetch

__all__ = ["RemoteFeedSource"]

logger = Logger("indexer.sources")

#: 64 MiB of fetched files not yet handed to the pipelines, at most.
MAX_PREFETCH_BYTES = 64 * 1024 * 1024
#: While the next file is missing (following the feed), look past it for a later file every
#: this many polls of it: a later file means a gap, not the tip. A remote feed cannot be
#: listed cheaply, so the look is a few requests: the files 1, 2, 4, ... past the missing one.
GAP_LOOK_EVERY = 50
#: How far past a missing file the look goes (a power of two).
GAP_LOOK_SPAN = 256


class RemoteFeedSource(CheckpointSource):
    """A feed of files ``{url}/{file_template}`` fetched by number (``file_template`` formats
    ``seq``; ``.zst`` and ``.gz`` files are decompressed; ``codec`` or ``decode`` decode them).

    Up to ``fetch_concurrency`` requests run ahead of the reader, delivered in order, with at
    most ``max_prefetch_bytes`` fetched and not delivered. A missing file is the feed's tip:
    polled every ``poll_interval`` seconds with ``follow``, else the stream ends. Transient
    faults are retried with backoff from ``retry_initial`` to ``retry_max_delay`` seconds,
    forever, and counted in ``stats.fetch_retries`` (the job's ``FeedStats`` when given);
    refusals halt (``FeedRequestRefused``). A subclass says how to fetch one file
    (``fetch_file``) and whether one is there (``file_exists``).
    """

    def __init__(
        self,
        url: str,
        *,
        file_template: str = "{seq}.chk",
        codec: Codec = "msgpack",
        decode: DecodeHook | None = None,
        follow: bool = True,
        poll_interval: float = 0.1,
        batch_size: int = 256,
        fetch_concurrency: int = 64,
        max_prefetch_bytes: int = MAX_PREFETCH_BYTES,
        connect_timeout: float = 5.0,
        request_timeout: float = 30.0,
        slow_request: float = 10.0,
        retry_initial: float = 0.25,
        retry_max_delay: float = 60.0,
        stats: FeedStats | None = None,
    ) -> None:
        check_prefetch(fetch_concurrency, max_prefetch_bytes)
        for key, value in (
            ("poll_interval", poll_interval),
            ("connect_timeout", connect_timeout),
            ("request_timeout", request_timeout),
            ("slow_request", slow_request),
        ):
            if not value > 0:
                raise ConfigurationError(f"must be > 0, got {value}", key=key)
        if batch_size < 1:
            raise ConfigurationError(f"must be >= 1, got {batch_size}", key="batch_size")
        if codec not in ("msgpack", "json"):
            raise ConfigurationError(f"must be 'msgpack' or 'json', got {codec!r}", key="codec")
        if not 0 <= retry_initial <= retry_max_delay:
            raise ConfigurationError(
                f"({retry_initial}) must be >= 0 and <= retry_max_delay ({retry_max_delay})",
                key="retry_initial",
            )
        self.url = url.rstrip("/")
        self.file_template = check_file_template(file_template)
        self.codec: Codec = codec
        self.decode = decode
        self.follow = follow
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self.fetch_concurrency = fetch_concurrency
        self.max_prefetch_bytes = max_prefetch_bytes
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.stats = stats if stats is not None else FeedStats()
        policy = RetryPolicy(initial=retry_initial, max_delay=retry_max_delay, jitter=0.2)
        self.faults = FetchFaults(self.stats, policy, slow_request)
        self._delivered = -1  # the highest number delivered
        self._latest: int | None = None  # the newest number the last probe found
        self._missing = -1  # the number last found missing, and how many times in a row
        self._misses = 0
        self._warned_gaps: set[int] = set()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({mask_dsn(self.url)!r}, follow={self.follow})"

    def file_name(self, n: int) -> str:
        """The name of checkpoint ``n``'s file, relative to the feed's URL."""
        return self.file_template.format(seq=n)

    def file_url(self, n: int) -> str:
        """Where checkpoint ``n``'s file is, credentials included (``mask_dsn`` it to print)."""
        return f"{self.url}/{self.file_name(n)}"

    @abstractmethod
    async def fetch_file(self, n: int) -> bytes | None:
        """One request for checkpoint ``n``'s file: its bytes, or None when it is not there
        (not produced yet). Raises ``TransientFetchError`` or ``FeedRequestRefused``."""

    @abstractmethod
    async def file_exists(self, n: int) -> bool:
        """One request: whether checkpoint ``n``'s file is there. Raises as ``fetch_file``."""

    async def list_newest(self) -> int | None:
        """The newest checkpoint by listing the feed, where it can be listed (else None)."""
        return None

    async def check_reachable(self, n: int) -> str:
        """One request for checkpoint ``n``'s file, for ``indexer config check``: what was
        found. Raises ``FeedRequestRefused`` (refused) or ``TransientFetchError`` (no answer,
        or an answer that a later attempt may change)."""
        there = await self.file_exists(n)
        return f"reached: checkpoint {n} {'is there' if there else 'is not there (yet)'}"

    # -- streaming -------------------------------------------------------------------------------

    def stream(
        self, start: int, decoder: CheckpointDecoder[Any]
    ) -> AsyncGenerator[SourcedBatch, None]:
        """Yield checkpoints from ``start`` on, fetched ahead; tail the feed with ``follow``."""
        return self._stream(start, None, decoder)

    def stream_to(
        self, start: int, last: int, decoder: CheckpointDecoder[Any]
    ) -> AsyncGenerator[SourcedBatch, None]:
        """``stream`` that requests nothing past ``last`` (chunked runs end every chunk so)."""
        return self._stream(start, last + 1, decoder)

    def _fetcher(
        self, payload: PayloadDecoder
    ) -> Callable[[int], Awaitable[tuple[Any, int] | None]]:
        """A fetch of one checkpoint under the fault rules: its file fetched and decoded (a
        body that does not decode is fetched again), None when it is not there."""
        faults, fetch_file, file_url = self.faults, self.fetch_file, self.file_url

        def masked_url(n: int) -> str:
            return mask_dsn(file_url(n))

        async def fetch(n: int) -> tuple[Any, int] | None:
            async def attempt() -> tuple[Any, int] | None:
                data = await fetch_file(n)
                if data is None:
                    return None
                try:
                    return payload.decode(data, n, masked_url)
                except CheckpointDecodeError as exc:
                    raise TransientFetchError("decode", file_url(n), str(exc)) from None

            fetched = await faults.run(attempt)
            if fetched is None and self.follow:
                await self._still_missing(n)
            return fetched

        return fetch

    async def _stream(
        self, start: int, stop: int | None, decoder: CheckpointDecoder[Any]
    ) -> AsyncGenerator[SourcedBatch, None]:
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        payload = PayloadDecoder(
            decoder, file_template=self.file_template, codec=self.codec, hook=self.decode
        )
        prefetcher = OrderedPrefetcher(
            self._fetcher(payload),
            start,
            stop,
            concurrency=self.fetch_concurrency,
            max_bytes=self.max_prefetch_bytes,
            batch_size=self.batch_size,
            follow=self.follow,
            poll_interval=self.poll_interval,
        )
        batches = aiter(prefetcher)
        n = start
        try:
            async for batch in batches:
                n += len(batch)
                if n - 1 > self._delivered:  # chunks of a shared source may run below others
                    self._delivered = n - 1
                yield batch
        finally:
            await batches.aclose()  # type: ignore[attr-defined]

    async def _still_missing(self, n: int) -> None:
        """File ``n`` was not there (again): every ``GAP_LOOK_EVERY`` misses in a row, look
        for a later file; one found is a gap (warned once, and the feed's newest checkpoint
        is probed from it, so that the lag shows a stalled pipeline, not an idle one)."""
        if n != self._missing:
            self._missing, self._misses = n, 0
        self._misses += 1
        if self._misses % GAP_LOOK_EVERY or n in self._warned_gaps:
            return
        try:
            later = await self._later_file(n)
            # One that arrived meanwhile was written out of order: no gap.
            if later is None or await self.file_exists(n):
                return
            self._latest = max(self._latest or 0, await self._probe_from(later))
        except (TransientFetchError, FeedRequestRefused):
            return  # a look that fails tells nothing; the fetches meet the fault themselves
        self._warned_gaps.add(n)
        logger.warning("gap in feed", missing=n, found=later, url=mask_dsn(self.url))

    async def _later_file(self, n: int) -> int | None:
        """A file 1, 2, 4, ... ``GAP_LOOK_SPAN`` past ``n`` that is there, or None."""
        step = 1
        while step <= GAP_LOOK_SPAN:
            if await self.file_exists(n + step):
                return n + step
            step *= 2
        return None

    async def unreadable(self) -> str | None:
        """Why the feed cannot be read now: its requests keep failing (None: they succeed)."""
        return self.faults.problem

    # -- the feed's newest file ------------------------------------------------------------------

    async def latest_sequence_number(self) -> int | None:
        """The feed's newest checkpoint: probed forward from the newest known (a few requests,
        doubling then halving the step), listed where nothing is known yet and the feed can be
        listed; the last known (or None) when requests fail now."""
        try:
            known = max(self._latest if self._latest is not None else -1, self._delivered)
            if known < 0:
                listed = await self.list_newest()
                if listed is not None:
                    self._latest = listed
                    return listed
                if not await self.file_exists(0):
                    return None
                known = 0
            self._latest = await self._probe_from(known)
        except (TransientFetchError, FeedRequestRefused):
            pass
        return self._latest

    async def _probe_from(self, known: int) -> int:
        """The newest file at or after ``known`` (which is there), galloping then bisecting."""
        step = 1
        while await self.file_exists(known + step):
            step *= 2
        low, high = (known + step // 2, known + step) if step > 1 else (known, known + 1)
        while high - low > 1:  # low is there, high is not
            middle = (low + high) // 2
            if await self.file_exists(middle):
                low = middle
            else:
                high = middle
        return low

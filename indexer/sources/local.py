"""A feed of ``{sequence_number}.chk`` files in a local directory: from memory on the event loop,
from the disk in a reader thread."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from .._log import Logger
from ..checkpoint import CheckpointDecoder
from ..errors import ConfigurationError
from ._base import CheckpointSource, SourcedBatch
from ._feed_names import FEED_NAME, FEED_TEMP, why_ignored
from ._feed_reader import FeedFileReader, FileRun
from ._partial_file import PartialFileGrace

logger = Logger("indexer.sources")
T = TypeVar("T")

#: While a file is missing, list the directory (for gap and stray-name warnings) every this many
#: polls: tailing the head of a live feed misses a few polls per checkpoint, and listing a
#: directory of a million files on every one of them would cost far more than the reads.
_LIST_EVERY = 5
#: ``prune`` deletes by name (no listing) when the watermark moved by at most this much.
_PRUNE_BY_NAME = 4096
#: ``latest_sequence_number`` lists the whole directory on every this many calls (once a
#: minute at the executor's 5 s poll) and probes forward from what it knows in between.
_LATEST_LIST_EVERY = 12
#: Files read on the event loop between two turns of it. ~32 x 2 KB read and ~32 x 7 KB decoded
#: stay in one core's L2 cache; a read-ahead of 256 decoded checkpoints did not, and ran at half
#: speed when another tenant of the machine filled the shared L3 (32 held 0.82 of the bare loop
#: there, 64 0.74-0.81). The loop is held for about a quarter of a millisecond.
_LOOP_RUN = 32


def _entry_names(entries: Any) -> Iterator[str]:
    """The names of an ``os.scandir`` iterator's entries, closing it at the end."""
    with entries:
        for entry in entries:
            yield entry.name


class _Listing(NamedTuple):
    exists: bool
    has_missing: bool  # the file that was missing is there now
    next_present: int | None  # the smallest number above the missing one


class LocalDirectorySource(CheckpointSource):
    """Reads ``{n}.chk`` msgpack files of ``path`` in order, tailing it when ``follow`` is True.

    Files are opened by their expected names (no listing on the fast path). Files the kernel
    holds in memory, as a live feed's newest are, are read and decoded on the event loop, 32 at
    a time, never waiting for the disk. A file that is not is read in one dedicated thread;
    when the next is not either, the thread asks the kernel to read the stretch ahead all
    together, and reads each batch while the consumer handles the one before (``FeedFileReader``).
    Without ``follow`` the feed ends at the first missing file. With it, the newest file that
    does not decode is read again for ``partial_file_grace`` seconds: its producer may be
    writing it in place (``PartialFileGrace``). Names that are not ``{n}.chk`` are ignored,
    with one warning each when a listing of the directory finds them.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        poll_interval: float = 0.1,
        follow: bool = True,
        batch_size: int = 256,
        delete_below_watermark: bool = False,
        partial_file_grace: float = 5.0,
    ) -> None:
        if poll_interval <= 0:
            raise ConfigurationError(f"must be > 0, got {poll_interval}", key="poll_interval")
        if not partial_file_grace >= 0:
            raise ConfigurationError(
                f"must be >= 0, got {partial_file_grace}", key="partial_file_grace"
            )
        if batch_size < 1:
            raise ConfigurationError(f"must be >= 1, got {batch_size}", key="batch_size")
        self.path = Path(path)
        self.poll_interval = poll_interval
        self.follow = follow
        self.batch_size = batch_size
        self.delete_below_watermark = delete_below_watermark
        self.partial_file_grace = partial_file_grace
        self._partial = PartialFileGrace(partial_file_grace)
        self._prefix = os.path.join(str(self.path), "")
        self._files = FeedFileReader(str(self.path))
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="indexer-feed-reader")
        self._warned_names: set[str] = set()
        self._odd_found: list[str] = []  # odd names a listing found, to warn about on the loop
        self._warned_gaps: set[int] = set()
        self._warned_missing_directory = False
        self._pruned_below = 0
        self._prune_listed = False
        self._latest: int | None = None  # the newest number the last listing or probe found
        self._latest_calls = 0
        self._stream_start = -1  # the highest start a stream was opened at: a first probe's base

    def __repr__(self) -> str:
        return f"LocalDirectorySource({str(self.path)!r}, follow={self.follow})"

    # -- reader thread ------------------------------------------------------------------------

    def _exists(self, n: int) -> bool:
        return os.path.exists(f"{self._prefix}{n}.chk")

    def _probe_latest(self, known: int) -> int:
        """The newest file at or after ``known`` (which exists), by galloping then bisecting
        over file names: a few dozen stats instead of listing a directory of millions."""
        step = 1
        while self._exists(known + step):
            step *= 2
        low, high = known + step // 2 if step > 1 else known, known + step  # low exists, high not
        while high - low > 1:
            middle = (low + high) // 2
            if self._exists(middle):
                low = middle
            else:
                high = middle
        return low

    def _latest_number(self) -> int | None:
        """The newest feed number.

        Probing forward assumes the feed's numbers have no gap beyond what is known; a gap, or
        files removed from the top, are found by the full listing every ``_LATEST_LIST_EVERY``
        calls."""
        self._latest_calls += 1
        # Before any file is read, the start of the stream is the base: a look then would
        # otherwise list the whole feed (0.15 s of CPU at the start of a run over 100,000 files).
        known = max(
            self._latest if self._latest is not None else -1,
            self._files.read_below - 1,
            self._stream_start,
        )
        if known >= 0 and self._latest_calls % _LATEST_LIST_EVERY and self._exists(known):
            self._latest = self._probe_latest(known)
            return self._latest
        numbers = self._numbers()
        self._latest = None if numbers is None else max(numbers, default=None)
        return self._latest

    def _names(self) -> Iterator[str] | None:
        """The names in the feed directory, one at a time, None when it does not exist.

        Never a list: the names of a 100,000-file feed took 8.5 MB, a third of a whole run's
        peak memory, each time the feed was listed."""
        try:
            entries = os.scandir(self.path)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            raise ConfigurationError(f"feed path {self.path} is not a directory") from None
        return _entry_names(entries)

    def _is_odd(self, name: str) -> bool:
        return name not in self._warned_names and FEED_TEMP.fullmatch(name) is None

    def _list(self, missing: int) -> _Listing:
        """List the feed: is ``missing`` there now, what follows it (odd names noted). The
        newest number it saw is the feed's newest (``_latest``): probing forward from what
        the reader read stops at a gap, which is what the reader lists for."""
        next_present: int | None = None
        has_missing = False
        newest = -1
        names = self._names()
        if names is None:
            return _Listing(False, False, None)
        for name in names:
            match = FEED_NAME.fullmatch(name)
            if match is None:
                if self._is_odd(name):
                    self._odd_found.append(name)
                continue
            n = int(match[1])
            if n > newest:
                newest = n
            if n == missing:
                has_missing = True
            elif n > missing and (next_present is None or n < next_present):
                next_present = n
        if newest >= 0:
            self._latest = newest
        if next_present is not None and not has_missing:
            # A listing of a directory being written to may miss a name added during it
            # (entries come in hash order): a producer writing in order renamed ``missing``
            # before any later file, so a look now tells a gap from a file the listing missed.
            has_missing = self._exists(missing)
        return _Listing(True, has_missing, next_present)

    def _has_newer(self, n: int, full: bool) -> bool:
        """Whether the feed holds a file numbered above ``n``: ``n + 1`` (one look), or with
        ``full`` any (a listing)."""
        return self._exists(n + 1) or (full and self._list(n).next_present is not None)

    def _numbers(self) -> Iterator[int] | None:
        """Every feed number in the directory, one at a time, None when it does not exist (odd
        names noted)."""
        names = self._names()
        return None if names is None else self._feed_numbers(names)

    def _feed_numbers(self, names: Iterator[str]) -> Iterator[int]:
        for name in names:
            match = FEED_NAME.fullmatch(name)
            if match is not None:
                yield int(match[1])
            elif self._is_odd(name):
                self._odd_found.append(name)

    def _prune(self, below: int) -> None:
        if below <= self._pruned_below:
            return
        if self._prune_listed and below - self._pruned_below <= _PRUNE_BY_NAME:
            doomed: Any = range(self._pruned_below, below)
        else:
            doomed = [n for n in self._numbers() or () if n < below]
        for n in doomed:
            with suppress(FileNotFoundError):
                os.unlink(f"{self._prefix}{n}.chk")
        self._prune_listed = True
        self._pruned_below = below

    # -- event loop ---------------------------------------------------------------------------

    async def _in_thread(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in the reader thread, then a warning for each odd name a listing
        there found: every listing of the feed warns, once per name."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, function, *args)
        finally:
            self._warn_odd()

    def _warn_odd(self) -> None:
        found, self._odd_found = self._odd_found, []
        for name in found:
            if name not in self._warned_names:
                self._warned_names.add(name)
                logger.warning(
                    "ignoring file not named {n}.chk",
                    file=name,
                    reason=why_ignored(name),
                    directory=str(self.path),
                )

    def _check_listing(self, listing: _Listing, missing: int) -> None:
        """Warn about a gap at ``missing``, a missing directory (an error if finite)."""
        if not listing.exists:
            if not self.follow:
                raise ConfigurationError(f"feed directory {self.path} does not exist")
            if not self._warned_missing_directory:
                self._warned_missing_directory = True
                logger.warning("waiting for the feed directory to appear", directory=str(self.path))
            return
        if (
            listing.next_present is not None
            and not listing.has_missing
            and missing not in self._warned_gaps
        ):
            self._warned_gaps.add(missing)
            logger.warning(
                "gap in feed",
                missing=missing,
                next_present=listing.next_present,
                directory=str(self.path),
            )

    def stream(
        self, start: int, decoder: CheckpointDecoder[Any]
    ) -> AsyncGenerator[SourcedBatch, None]:
        """Yield the files from ``start`` on in batches; tail the directory when ``follow``."""
        return self._opened(start, None, decoder)

    def stream_to(
        self, start: int, last: int, decoder: CheckpointDecoder[Any]
    ) -> AsyncGenerator[SourcedBatch, None]:
        """``stream`` that reads no file past ``last`` (chunked runs end every chunk so)."""
        return self._opened(start, last, decoder)

    def _opened(
        self, start: int, last: int | None, decoder: CheckpointDecoder[Any]
    ) -> AsyncGenerator[SourcedBatch, None]:
        """The stream, its start noted now (the generator's body runs only once iterated)."""
        self._stream_start = max(self._stream_start, start)
        return self._stream(start, last, decoder)

    async def _stream(
        self, start: int, last: int | None, decoder: CheckpointDecoder[Any]
    ) -> AsyncGenerator[SourcedBatch, None]:
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        loop = asyncio.get_running_loop()
        executor, files, batch_size = self._executor, self._files, self.batch_size
        read_cached, loop_run = files.read_cached, min(batch_size, _LOOP_RUN)
        stop = last + 1 if last is not None else None  # the first file never to read

        def size(n: int, most: int = batch_size) -> int:
            return most if stop is None else min(most, stop - n)

        def read_ahead(n: int, prefetch: bool = False) -> asyncio.Future[FileRun]:
            # ``loop_run`` files per hop, as on the loop, the disk asked for a whole batch
            # ahead: hops of a whole batch, the next read meanwhile, held two batches of
            # decoded checkpoints at once (3.7 MB more peak RSS with a tenth of the files on
            # disk, and no faster from the disk).
            read, span = size(n, loop_run), size(n)
            return loop.run_in_executor(executor, files.read, n, read, decoder, prefetch, span)

        n = start
        misses = 0
        if stop is not None and n >= stop:
            return
        # A read of the files from ``n`` on, in the reader thread: while they are not in memory,
        # the next batch is read there while this one is consumed.
        ahead: asyncio.Future[FileRun] | None = None
        try:
            while True:
                if ahead is None:
                    run = read_cached(n, size(n, loop_run), decoder)
                    if not run.files and run.cold:  # file n is not in memory: wait in the thread
                        ahead = read_ahead(n)
                if ahead is not None:
                    run = await ahead
                    ahead = None
                    end = n + run.files
                    if run.cold and run.error is None and (stop is None or end < stop):
                        ahead = read_ahead(end, prefetch=True)
                batch, error, count, _ = run
                if not count:
                    misses += 1
                    if not self.follow or (
                        misses % _LIST_EVERY == 0 and n not in self._warned_gaps
                    ):
                        listing = await self._in_thread(self._list, n)
                        self._check_listing(listing, n)
                        if not self.follow and listing.has_missing and misses == 1:
                            continue  # it arrived between the read and the listing: read it
                    if not self.follow:
                        return
                    await asyncio.sleep(self.poll_interval)
                    continue
                misses = 0
                if error is not None:
                    if batch:  # hand over the good checkpoints before the bad one
                        n += len(batch)
                        yield batch
                    if not await self._read_again(n, error):
                        raise error
                    continue
                n += count
                yield batch
                if stop is not None and n >= stop:
                    return
                await asyncio.sleep(0)  # the workers take this batch before the next is read
        finally:
            # A read still in flight finishes in the thread; its result (or error) is dropped.
            if ahead is not None and not ahead.cancel() and not ahead.cancelled():
                ahead.exception()

    async def _read_again(self, n: int, error: Exception) -> bool:
        """Whether file ``n``, which failed to decode, is read again (after a poll when it is
        the feed's newest): a live feed's producer may be writing it (``PartialFileGrace``).
        Without ``follow`` the feed is read as it is, and the error counts at once."""
        if not self.follow or not self.partial_file_grace:
            return False
        new = self._partial.is_new(n)
        newer = await self._in_thread(self._has_newer, n, new)
        if not self._partial.read_again(n, newer):
            return False
        if not newer:
            if new:
                logger.warning(
                    "feed file does not decode yet: reading it again",
                    file=self._files.path(n),
                    checkpoint=n,
                    grace=self.partial_file_grace,
                    error=str(error),
                    hint="producers should write a temporary file and rename it into place",
                )
            await asyncio.sleep(self.poll_interval)
        return True

    async def latest_sequence_number(self) -> int | None:
        """The largest ``{n}.chk`` in the directory, or None when it holds none (or is missing)."""
        return await self._in_thread(self._latest_number)

    async def unreadable(self) -> str | None:
        """Why the feed directory cannot be read now: it is missing or not readable."""
        return await self._in_thread(self._unreadable)

    def _unreadable(self) -> str | None:
        if not self.path.is_dir():
            return f"feed directory {self.path} does not exist"
        if not os.access(self.path, os.R_OK | os.X_OK):
            return f"feed directory {self.path} is not readable"
        return None

    async def prune(self, below: int) -> None:
        """Delete the files numbered below ``below`` when ``delete_below_watermark`` is set.

        The first call lists the directory; later ones delete the new range by name, so files
        that appear below an earlier ``below`` afterwards are not looked for again.
        """
        if self.delete_below_watermark and below > self._pruned_below:
            await self._in_thread(self._prune, below)

    async def close(self) -> None:
        """Stop the reader thread (after the read it may be doing; idempotent)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

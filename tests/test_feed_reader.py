"""Where the local feed reads its files: on the event loop while they are in memory, in the
reader thread while they are not.

The tests check what the source does, not how it batches: every checkpoint is delivered once,
in order, as written, and which files each path read (the numbers of the checkpoints each
returned). Most fake the kernel's answers to reads that must not wait, which makes them
deterministic; one evicts files from the page cache for real."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import math
import mmap
import os
import re
import threading
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

from indexer.checkpoint import Checkpoint, CheckpointDecoder, Event, Transaction, encode_checkpoint
from indexer.errors import CheckpointDecodeError
from indexer.sources import (
    LocalDirectorySource,
    SyntheticSource,
    _feed_reader,
    write_checkpoint_file,
    write_feed,
)
from indexer.sources._feed_reader import FileRun

pytestmark = pytest.mark.skipif(
    _feed_reader.NOWAIT is None, reason="reads that do not wait for the disk are Linux-only"
)

_FEED_FILE = re.compile(r"(0|[1-9][0-9]*)\.chk")


class Reads:
    """Spies on the source's two ways of reading files, by the checkpoints each returned.

    ``loop``: the files read on the event loop (from memory); ``thread``: those read in the
    reader thread. ``hops``: how many reads were handed to the thread. ``stalled``: the files
    at which a read on the loop stopped before it could read any (not in memory). ``failed``:
    the files whose decoding error a read in the thread returned."""

    def __init__(self, source: LocalDirectorySource) -> None:
        self.loop: list[int] = []
        self.thread: list[int] = []
        self.hops = 0
        self.stalled: list[int] = []
        self.failed: list[int] = []
        self.loop_threads: set[int] = set()  # the threads ``loop`` was read on
        self.reader_threads: set[int] = set()  # the threads ``thread`` was read on
        files = source._files
        read_cached, read = files.read_cached, files.read

        def spy_cached(start: int, limit: int, decoder: CheckpointDecoder[Any]) -> FileRun:
            self.loop_threads.add(threading.get_ident())
            run = read_cached(start, limit, decoder)
            self.loop.extend(sequence_numbers(run))
            if not run.files and run.cold:
                self.stalled.append(start)
            return run

        def spy_read(
            start: int,
            limit: int,
            decoder: CheckpointDecoder[Any],
            prefetch: bool = False,
            span: int | None = None,
        ) -> FileRun:
            self.hops += 1
            self.reader_threads.add(threading.get_ident())
            run = read(start, limit, decoder, prefetch, span)
            self.thread.extend(sequence_numbers(run))
            if run.error is not None:
                self.failed.append(start + len(run.batch))  # the batch ends before the bad file
            return run

        files.read_cached = spy_cached  # type: ignore[method-assign]
        files.read = spy_read  # type: ignore[method-assign]

    def split(self, total: int, thread: set[int] | range) -> None:
        """Assert that ``thread`` were read in the reader thread, every other file of the
        ``total`` on the event loop, and each path on its own thread."""
        assert sorted(self.thread) == sorted(thread)
        assert sorted(self.loop) == sorted(set(range(total)) - set(thread))
        self.on_their_threads()

    def on_their_threads(self) -> None:
        """The loop's reads ran on the event loop's thread, the others on another one."""
        loop_thread = threading.get_ident()  # the tests run on the event loop's thread
        assert self.loop_threads <= {loop_thread}
        assert loop_thread not in self.reader_threads


def sequence_numbers(run: FileRun) -> list[int]:
    return [checkpoint.sequence_number for checkpoint, _ in run.batch]


async def make_feed(directory: Path, count: int) -> SyntheticSource:
    synthetic = SyntheticSource(seed=3)
    assert await write_feed(synthetic, directory, count=count) == count
    return synthetic


async def read_all(source: LocalDirectorySource) -> list[list[tuple[Any, int]]]:
    async with aclosing(source.stream(0, CheckpointDecoder())) as batches:
        return [batch async for batch in batches]


def numbers(batches: list[list[tuple[Any, int]]]) -> list[int]:
    return [checkpoint.sequence_number for batch in batches for checkpoint, _ in batch]


def delivered(
    batches: list[list[tuple[Any, int]]], synthetic: SyntheticSource, directory: Path, count: int
) -> None:
    """Assert that checkpoints 0 to ``count - 1`` were each delivered once, in order, equal to
    what was written, with the size of their file."""
    assert numbers(batches) == list(range(count))
    for batch in batches:
        for checkpoint, size in batch:
            n = checkpoint.sequence_number
            assert checkpoint == synthetic.checkpoint_at(n)
            assert size == (directory / f"{n}.chk").stat().st_size


def number_of(fd: int) -> int | None:
    """The feed number of an open ``{n}.chk`` file, None for any other file."""
    match = _FEED_FILE.fullmatch(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
    return int(match[1]) if match else None


def in_memory(path: Path) -> bool:
    """Whether the first page of ``path`` is in the page cache, asked with mincore(2), which
    starts no read (a read that does not wait starts one)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY) as mapped:
        first = ctypes.c_char.from_buffer(mapped)
        vector = ctypes.create_string_buffer(1)
        failed = libc.mincore(ctypes.addressof(first), 1, vector)
        del first  # the mapping cannot close while this view of it lives
        assert failed == 0, os.strerror(ctypes.get_errno())
        resident = bool(vector.raw[0] & 1)
    return resident


def evict(directory: Path, numbers: range) -> bool:
    """Drop files from the page cache; False when this file system keeps them in memory."""
    for n in numbers:
        fd = os.open(directory / f"{n}.chk", os.O_RDONLY)
        try:
            os.fsync(fd)  # only clean pages can be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return not any(in_memory(directory / f"{n}.chk") for n in numbers)


def kernel(monkeypatch: pytest.MonkeyPatch, answer: Any) -> None:
    """Make reads of feed files that must not wait (``preadv`` with flags) answer as
    ``answer(n, read)`` does for file ``n``, where ``read()`` is the real read."""
    preadv = os.preadv

    def fake(fd: int, buffers: Any, offset: int, flags: int = 0) -> int:
        n = number_of(fd) if flags else None
        if n is None:
            return preadv(fd, buffers, offset, flags)
        return answer(n, lambda: preadv(fd, buffers, offset, flags))

    monkeypatch.setattr(os, "preadv", fake)


def on_disk(monkeypatch: pytest.MonkeyPatch, numbers: set[int] | range) -> None:
    """Make the kernel answer, for these files, that reading them would wait for the disk."""

    def answer(n: int, read: Any) -> int:
        if n in numbers:
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        return read()

    kernel(monkeypatch, answer)


def disk_log(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """What the reader asks of the disk, in order: ``("advise", n)`` when it asks the kernel to
    read file ``n`` ahead (POSIX_FADV_WILLNEED), ``("read", n)`` when it reads file ``n`` with a
    read that may wait. (Installed after ``kernel``, whose answers it passes on.)"""
    log: list[tuple[str, int]] = []
    posix_fadvise, read, preadv = os.posix_fadvise, os.read, os.preadv

    def record(what: str, fd: int) -> None:
        n = number_of(fd)
        if n is not None:
            log.append((what, n))

    def spy_fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        if advice == os.POSIX_FADV_WILLNEED:
            record("advise", fd)
        posix_fadvise(fd, offset, length, advice)

    def spy_read(fd: int, size: int) -> bytes:
        record("read", fd)
        return read(fd, size)

    def spy_preadv(fd: int, buffers: Any, offset: int, flags: int = 0) -> int:
        if not flags:
            record("read", fd)
        return preadv(fd, buffers, offset, flags)

    monkeypatch.setattr(os, "posix_fadvise", spy_fadvise)
    monkeypatch.setattr(os, "read", spy_read)
    monkeypatch.setattr(os, "preadv", spy_preadv)
    return log


def advised(log: list[tuple[str, int]]) -> list[int]:
    return [n for what, n in log if what == "advise"]


async def test_files_in_memory_are_read_on_the_loop(tmp_path: Path) -> None:
    synthetic = await make_feed(tmp_path, 200)  # just written: in the page cache
    source = LocalDirectorySource(tmp_path, follow=False)
    reads = Reads(source)
    batches = await read_all(source)
    await source.close()
    delivered(batches, synthetic, tmp_path, 200)
    reads.split(200, thread=set())
    assert reads.hops == 0  # not one hop to the reader thread
    assert reads.loop_threads == {threading.get_ident()}


async def test_the_loop_turns_between_two_runs_read_on_it(tmp_path: Path) -> None:
    """The workers take each run before the next is read: even a consumer that asks for the
    next batch at once lets other tasks run in between (what keeps the decoded checkpoints in
    flight few)."""
    await make_feed(tmp_path, 64)
    source = LocalDirectorySource(tmp_path, follow=False)
    ran: list[int] = []
    loop = asyncio.get_running_loop()
    async with aclosing(source.stream(0, CheckpointDecoder())) as batches:
        got = [len(await anext(batches))]
        loop.call_soon(ran.append, 1)
        got.append(len(await anext(batches)))
        assert ran == [1]  # before the second run was read and handed over
    await source.close()
    assert all(got) and sum(got) <= 64


async def test_files_on_disk_are_read_in_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real eviction from the page cache. The kernel decides what a read that does not wait
    finds: one that misses memory starts a disk read, which a fast disk may finish before the
    call returns, so whether an evicted file goes through the thread varies from run to run
    (``in_memory`` cannot tell). What holds whatever the kernel does: everything is delivered,
    once and in order; a file the loop stopped at, before it could read any, is one the kernel
    refused it (EAGAIN) and is then read in the thread; and the thread is used only then.
    (The tests below fake the kernel's answers to pin which files go where.)"""
    synthetic = await make_feed(tmp_path, 40)
    if not evict(tmp_path, range(10, 40)):
        pytest.skip("this file system does not drop files from memory on request")
    refused: set[int] = set()  # files the kernel refused to read without waiting, on the loop
    loop_thread, preadv = threading.get_ident(), os.preadv

    def spy(fd: int, buffers: Any, offset: int, flags: int = 0) -> int:
        try:
            return preadv(fd, buffers, offset, flags)
        except BlockingIOError:
            n = number_of(fd)
            if flags and n is not None and threading.get_ident() == loop_thread:
                refused.add(n)
            raise

    monkeypatch.setattr(os, "preadv", spy)
    source = LocalDirectorySource(tmp_path, follow=False, batch_size=10)
    reads = Reads(source)
    batches = await read_all(source)
    await source.close()
    delivered(batches, synthetic, tmp_path, 40)
    assert set(reads.stalled) <= refused  # the loop gives up on a file only when refused it
    assert set(reads.stalled) <= set(reads.thread)  # ... which the thread then reads
    assert not reads.thread or min(reads.thread) in reads.stalled  # no hop without that
    reads.split(40, thread=set(reads.thread))
    assert reads.hops == 0 or reads.stalled


async def test_a_stretch_on_disk_is_read_ahead_in_the_thread_then_back_on_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    total, stretch, batch_size = 120, range(20, 60), 10
    synthetic = await make_feed(tmp_path, total)
    on_disk(monkeypatch, stretch)
    log = disk_log(monkeypatch)
    source = LocalDirectorySource(tmp_path, follow=False, batch_size=batch_size)
    reads = Reads(source)
    batches = await read_all(source)
    await source.close()
    delivered(batches, synthetic, tmp_path, total)
    # The files before the stretch are read on the loop, the stretch in the thread. Reading
    # goes back to the loop once files are in memory again: the thread may have read a little
    # past the stretch (what it was asked to read ahead while the stretch lasted), not on.
    end = max(reads.thread) + 1
    assert stretch.stop <= end <= stretch.stop + 2 * batch_size
    reads.split(total, thread=range(stretch.start, end))
    # The kernel is asked to read the stretch ahead: every file of it is advised before it is
    # read, but for its first one or two (which tell a stretch from a file dropped here and
    # there); no file before the stretch, in memory, is advised.
    first: dict[tuple[str, int], int] = {}
    for index, event in enumerate(log):
        first.setdefault(event, index)
    late = [n for n in stretch if first.get(("advise", n), math.inf) > first[("read", n)]]
    assert late == list(stretch[: len(late)]) and len(late) <= 2
    assert min(advised(log)) >= stretch.start


async def test_a_file_dropped_from_memory_here_and_there_costs_one_hop_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synthetic = await make_feed(tmp_path, 100)
    on_disk(monkeypatch, {5, 17})
    log = disk_log(monkeypatch)
    source = LocalDirectorySource(tmp_path, follow=False)
    reads = Reads(source)
    batches = await read_all(source)
    await source.close()
    delivered(batches, synthetic, tmp_path, 100)
    reads.split(100, thread={5, 17})  # each alone in the thread, the rest on the loop
    assert reads.hops == 2
    assert advised(log) == []  # no read ahead for a file here and there


async def test_a_part_read_from_memory_is_read_again_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that does not wait may return only the part of a file that is in memory: it
    must not be taken for a corrupt file."""
    synthetic = await make_feed(tmp_path, 10)
    kernel(monkeypatch, lambda n, read: read() // 2 if n == 5 else read())
    source = LocalDirectorySource(tmp_path, follow=False)
    reads = Reads(source)
    batches = await read_all(source)
    await source.close()
    delivered(batches, synthetic, tmp_path, 10)
    reads.split(10, thread={5})  # 5 read whole in the thread
    assert reads.failed == []


@pytest.mark.parametrize(
    "disk",
    [set(), {5}, range(3, 10)],
    ids=["in-memory", "dropped-from-memory", "in-a-stretch-on-disk"],
)
async def test_a_corrupt_file_is_an_error_from_either_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, disk: set[int] | range
) -> None:
    """Met on the loop (in memory) or in the thread (on disk, alone or in a run): the
    checkpoints before it are delivered, then its decoding error is raised, the one of the
    thread's whole read (the loop cannot tell a corrupt file from a part of one)."""
    synthetic = await make_feed(tmp_path, 10)
    corrupt = tmp_path / "5.chk"
    corrupt.write_bytes(corrupt.read_bytes()[:100])
    on_disk(monkeypatch, disk)
    source = LocalDirectorySource(tmp_path, follow=False)
    reads = Reads(source)
    seen: list[Any] = []
    with pytest.raises(CheckpointDecodeError, match=r"5\.chk: checkpoint 5 cannot be decoded"):
        async with aclosing(source.stream(0, CheckpointDecoder())) as batches:
            async for batch in batches:
                seen.extend(checkpoint for checkpoint, _ in batch)
    await source.close()
    assert seen == [synthetic.checkpoint_at(n) for n in range(5)]
    assert reads.failed == [5]
    assert 5 not in reads.loop + reads.thread
    reads.on_their_threads()


async def test_a_file_system_without_nowait_reads_in_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synthetic = await make_feed(tmp_path, 30)

    def refuse(n: int, read: Any) -> int:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    kernel(monkeypatch, refuse)
    source = LocalDirectorySource(tmp_path, follow=False, batch_size=10)
    reads = Reads(source)
    batches = await read_all(source)
    await source.close()
    delivered(batches, synthetic, tmp_path, 30)
    assert source._files.nowait is None
    reads.split(30, thread=range(30))


@pytest.mark.parametrize("where", ["memory", "disk"])
async def test_a_large_file_is_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Larger than one 64 KiB read: on the loop (in memory) and in the thread (on disk)."""
    big = Checkpoint(
        sequence_number=0,
        timestamp_ms=1,
        transactions=[Transaction("d", "s", [Event("blob", {"data": "x" * 200_000})])],
    )
    write_checkpoint_file(tmp_path, big)
    if where == "disk":
        on_disk(monkeypatch, {0})
    source = LocalDirectorySource(tmp_path, follow=False)
    reads = Reads(source)
    [[(checkpoint, size)]] = await read_all(source)
    await source.close()
    assert checkpoint == big and size == len(encode_checkpoint(big)) > 1 << 16
    reads.split(1, thread=set() if where == "memory" else {0})

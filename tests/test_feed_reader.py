"""Where the local feed reads its files: on the event loop while they are in memory, in the
reader thread (one batch read ahead) while they are not."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import mmap
import os
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


class Reads:
    """Records, for each run the source reads, where it started and on which thread."""

    def __init__(self, source: LocalDirectorySource) -> None:
        self.loop: list[int] = []  # runs read on the event loop (files in memory)
        self.thread: list[int] = []  # runs read in the reader thread
        self.threads: set[int] = set()
        files = source._files
        read_cached, read = files.read_cached, files.read

        def spy_cached(start: int, limit: int, decoder: CheckpointDecoder[Any]) -> FileRun:
            run = read_cached(start, limit, decoder)
            if run.files:
                self.loop.append(start)
            self.threads.add(threading.get_ident())
            return run

        def spy_read(
            start: int, limit: int, decoder: CheckpointDecoder[Any], prefetch: bool = False
        ) -> FileRun:
            self.thread.append(start)
            self.threads.add(threading.get_ident())
            return read(start, limit, decoder, prefetch)

        files.read_cached = spy_cached  # type: ignore[method-assign]
        files.read = spy_read  # type: ignore[method-assign]


async def make_feed(directory: Path, count: int) -> SyntheticSource:
    synthetic = SyntheticSource(seed=3)
    assert await write_feed(synthetic, directory, count=count) == count
    return synthetic


async def read_all(source: LocalDirectorySource) -> list[list[tuple[Any, int]]]:
    async with aclosing(source.stream(0, CheckpointDecoder())) as batches:
        return [batch async for batch in batches]


def numbers(batches: list[list[tuple[Any, int]]]) -> list[int]:
    return [checkpoint.sequence_number for batch in batches for checkpoint, _ in batch]


def number_of(fd: int) -> int:
    """The feed number of an open ``{n}.chk`` file."""
    return int(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).removesuffix(".chk"))


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


async def test_files_in_memory_are_read_on_the_loop_32_at_a_time(tmp_path: Path) -> None:
    synthetic = await make_feed(tmp_path, 200)  # just written: in the page cache
    source = LocalDirectorySource(tmp_path, follow=False)  # batch_size 256
    reads = Reads(source)
    batches = await read_all(source)
    await source.close()
    assert numbers(batches) == list(range(200))
    assert [len(batch) for batch in batches] == [32] * 6 + [8]
    assert reads.loop == list(range(0, 200, 32)) and reads.thread == []
    assert reads.threads == {threading.get_ident()}
    for batch in batches:
        for checkpoint, size in batch:
            n = checkpoint.sequence_number
            assert checkpoint == synthetic.checkpoint_at(n)
            assert size == (tmp_path / f"{n}.chk").stat().st_size


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
    assert got == [32, 32]


async def test_files_on_disk_are_read_in_the_thread(tmp_path: Path) -> None:
    """Real eviction from the page cache: the loop reads 0-9, meets 10 on disk, and hands it to
    the thread. (Which reader takes each later file depends on the disk and the file system:
    reading one file from disk can bring others into memory, so only the start is pinned;
    the tests below fake the kernel's answers to pin the rest.)"""
    await make_feed(tmp_path, 40)
    if not evict(tmp_path, range(10, 40)):
        pytest.skip("this file system does not drop files from memory on request")
    source = LocalDirectorySource(tmp_path, follow=False, batch_size=10)
    reads = Reads(source)
    batches = await read_all(source)
    await source.close()
    assert numbers(batches) == list(range(40))
    assert len(batches[0]) == 10 and reads.loop[0] == 0
    assert reads.thread[0] == 10
    assert len(reads.threads) == 2


def kernel(monkeypatch: pytest.MonkeyPatch, answer: Any) -> None:
    """Make reads that must not wait (``preadv`` with flags) answer as ``answer(n, read)`` does
    for file ``n``, where ``read()`` is the real read."""
    preadv = os.preadv

    def fake(fd: int, buffers: Any, offset: int, flags: int = 0) -> int:
        if not flags:
            return preadv(fd, buffers, offset)
        return answer(number_of(fd), lambda: preadv(fd, buffers, offset, flags))  # type: ignore[no-any-return]

    monkeypatch.setattr(os, "preadv", fake)


def on_disk(monkeypatch: pytest.MonkeyPatch, numbers: set[int]) -> None:
    """Make the kernel answer, for these files, that reading them would wait for the disk."""

    def answer(n: int, read: Any) -> int:
        if n in numbers:
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        return read()  # type: ignore[no-any-return]

    kernel(monkeypatch, answer)


def advice(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The files the kernel is asked to read ahead (POSIX_FADV_WILLNEED), in order."""
    advised: list[int] = []
    posix_fadvise = os.posix_fadvise

    def spy(fd: int, offset: int, length: int, advice: int) -> None:
        if advice == os.POSIX_FADV_WILLNEED:
            advised.append(number_of(fd))
        posix_fadvise(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", spy)
    return advised


async def test_a_stretch_on_disk_is_read_ahead_together_then_back_on_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await make_feed(tmp_path, 80)
    on_disk(monkeypatch, set(range(20, 60)))
    advised = advice(monkeypatch)
    source = LocalDirectorySource(tmp_path, follow=False, batch_size=10)
    reads = Reads(source)
    batches = await read_all(source)
    await source.close()
    assert numbers(batches) == list(range(60)) + list(range(60, 80))
    # 20 and 21 on disk: the rest of that run is advised, and each full run on disk advises
    # the next; the run of 60-69 came all from memory, so the loop reads on from 70.
    assert reads.thread == [20, 30, 40, 50, 60]
    assert reads.loop == [0, 10, 70]
    assert advised == list(range(22, 70))


async def test_a_file_dropped_from_memory_here_and_there_costs_one_hop_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await make_feed(tmp_path, 100)
    on_disk(monkeypatch, {5, 17})
    advised = advice(monkeypatch)
    source = LocalDirectorySource(tmp_path, follow=False)
    reads = Reads(source)
    batches = await read_all(source)
    await source.close()
    assert numbers(batches) == list(range(100))
    assert [len(batch) for batch in batches] == [5, 1, 11, 1, 32, 32, 18]
    assert reads.thread == [5, 17]
    assert reads.loop == [0, 6, 18, 50, 82]
    assert advised == []  # no read ahead for a file here and there


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
    assert [checkpoint for batch in batches for checkpoint, _ in batch] == [
        synthetic.checkpoint_at(n) for n in range(10)
    ]
    assert reads.loop == [0, 6] and reads.thread == [5]  # 5 read whole in the thread


async def test_a_corrupt_file_is_an_error_from_either_path(tmp_path: Path) -> None:
    await make_feed(tmp_path, 10)
    corrupt = tmp_path / "5.chk"
    corrupt.write_bytes(corrupt.read_bytes()[:100])
    source = LocalDirectorySource(tmp_path, follow=False)
    reads = Reads(source)
    seen: list[int] = []
    with pytest.raises(CheckpointDecodeError, match=r"5\.chk: checkpoint 5 cannot be decoded"):
        async with aclosing(source.stream(0, CheckpointDecoder())) as batches:
            async for batch in batches:
                seen.extend(checkpoint.sequence_number for checkpoint, _ in batch)
    await source.close()
    assert seen == [0, 1, 2, 3, 4]
    assert reads.loop == [0] and reads.thread == [5]  # the thread's read is the one that counts


async def test_a_file_system_without_nowait_reads_in_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await make_feed(tmp_path, 30)

    def refuse(n: int, read: Any) -> int:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    kernel(monkeypatch, refuse)
    source = LocalDirectorySource(tmp_path, follow=False, batch_size=10)
    reads = Reads(source)
    batches = await read_all(source)
    await source.close()
    assert numbers(batches) == list(range(30))
    assert source._files.nowait is None
    assert reads.loop == [] and reads.thread == [0, 10, 20, 30]


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
    assert checkpoint == big and size == len(encode_checkpoint(big))
    assert (reads.loop, reads.thread) == (([0], []) if where == "memory" else ([], [0]))

"""Reading a directory feed's ``{n}.chk`` files: from memory on the event loop, from the disk in
the reader thread.

A file the kernel holds in its page cache is read on the event loop, with ``preadv2`` and
``RWF_NOWAIT``, which fail rather than wait for the disk: no thread hop, and a few dozen decoded
checkpoints at a time stay in the core's cache. A file that is not in memory, or a platform
without ``RWF_NOWAIT``, is read in the reader thread, which may wait for the disk, and which
asks the kernel to read a stretch of such files ahead all together.
"""

from __future__ import annotations

import errno
import os
from typing import Any, NamedTuple

from ..checkpoint import CheckpointDecoder
from ..errors import CheckpointDecodeError, FeedReadError
from ._base import SourcedBatch

_READ_SIZE = 1 << 16
#: The ``preadv`` flag for "fail rather than wait for the disk" (Linux 4.14+), else None.
NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None) if hasattr(os, "preadv") else None
#: The advice that starts reading a file into memory without waiting for it, else None.
_WILLNEED: int | None = getattr(os, "POSIX_FADV_WILLNEED", None)
#: What a file system without ``RWF_NOWAIT`` for buffered reads answers.
_UNSUPPORTED = {errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL}


class FileRun(NamedTuple):
    """Files ``start, start + 1, ...`` as read and decoded in one go."""

    batch: SourcedBatch  # the (checkpoint, size) pairs before the first bad file
    error: CheckpointDecodeError | None  # that file's error
    files: int  # how many files were read
    # the loop stopped at a file not in memory; the thread read all it was asked and waited
    cold: bool


class FeedFileReader:
    """The ``{n}.chk`` files of one directory, read in runs of consecutive numbers.

    ``read_cached`` runs on the event loop, ``read`` in the one reader thread; the source never
    runs both at once, and each has its own buffer."""

    def __init__(self, directory: str) -> None:
        self.prefix = os.path.join(directory, "")
        self.nowait = NOWAIT  # None once the file system refuses RWF_NOWAIT
        self.read_below = 0  # files below this number have been read (so they exist)
        self._advised_below = 0  # files below this number have been advised (_advise)
        self._buffer = bytearray(_READ_SIZE)
        self._buffers = [self._buffer]
        self._view = memoryview(self._buffer)
        self._probe = [bytearray(1)]
        # The reader thread's own buffer: ``os.read(fd, 64 KiB)`` allocates 64 KiB for each
        # file and shrinks it, which left the thread's malloc arena 3-5 MB larger.
        self._thread_buffer = bytearray(_READ_SIZE)
        self._thread_buffers = [self._thread_buffer]
        self._thread_view = memoryview(self._thread_buffer)

    def path(self, n: int) -> str:
        return f"{self.prefix}{n}.chk"

    def _open(self, n: int, first: bool) -> int | None:
        """File ``n`` opened, or None when it is missing, or unreadable after others were read
        (the next run raises there); raises FeedReadError when it is the run's first."""
        try:
            return os.open(f"{self.prefix}{n}.chk", os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if not first:
                return None
            raise self._unreadable(n, exc) from None

    def _unreadable(self, n: int, exc: OSError) -> FeedReadError:
        return FeedReadError(f"{self.path(n)}: cannot read checkpoint {n}: {exc.strerror}")

    # -- on the event loop ------------------------------------------------------------------

    def read_cached(self, start: int, limit: int, decoder: CheckpointDecoder[Any]) -> FileRun:
        """Read and decode files from ``start`` (at most ``limit``) while their data is in
        memory, never waiting for the disk; ``cold`` when it stopped at a file that is not.

        A read that does not wait can return part of a file that is partly in memory; msgpack
        never decodes from a part, so a file that fails to decode here is left, as cold, to
        ``read``, whose error is the one that counts."""
        nowait = self.nowait
        if nowait is None:
            return FileRun([], None, 0, True)
        prefix, buffers, view = self.prefix, self._buffers, self._view
        preadv, close = os.preadv, os.close
        contents: list[bytes] = []
        append = contents.append
        cold = False
        for n in range(start, start + limit):  # the loop of _open, inlined: it runs per file
            try:
                fd = os.open(f"{prefix}{n}.chk", os.O_RDONLY)
            except FileNotFoundError:
                break
            except OSError as exc:
                if contents:
                    break
                raise self._unreadable(n, exc) from None
            try:
                count = preadv(fd, buffers, 0, nowait)
                data = view[:count].tobytes() if count < _READ_SIZE else self._read_rest(fd)
            except BlockingIOError:
                cold = True
                break
            except OSError as exc:
                if exc.errno in _UNSUPPORTED:
                    self.nowait = None
                    cold = True
                    break
                if contents:
                    break
                raise self._unreadable(n, exc) from None
            finally:
                close(fd)
            if data is None:
                cold = True
                break
            append(data)
        if not contents:
            return FileRun([], None, 0, cold)
        self.read_below = max(self.read_below, start + len(contents))
        batch, error = decoder.decode_run(contents, start, self.path)
        if error is not None:
            return FileRun(batch, None, len(batch), True)
        return FileRun(batch, None, len(contents), cold)

    def _read_rest(self, fd: int) -> bytes | None:
        """All of a file larger than the buffer, which holds its start, or None when some of
        the rest is not in memory."""
        assert self.nowait is not None
        chunks = [bytes(self._buffer)]
        offset = _READ_SIZE
        while True:
            try:
                count = os.preadv(fd, self._buffers, offset, self.nowait)
            except BlockingIOError:
                return None
            chunks.append(self._view[:count].tobytes())
            if count < _READ_SIZE:
                return b"".join(chunks)
            offset += count

    # -- in the reader thread ---------------------------------------------------------------

    def read(
        self,
        start: int,
        limit: int,
        decoder: CheckpointDecoder[Any],
        prefetch: bool = False,
        span: int | None = None,
    ) -> FileRun:
        """Read and decode files from ``start`` (at most ``limit``, up to a missing one),
        waiting for the disk; ``cold`` when all ``limit`` were read and some had to wait, so
        the next ones are likely on disk too.

        If the second file is in memory, the run ends there: a file the kernel dropped here
        and there costs one hop to this thread, and the loop reads on. If it is not, or at
        once with ``prefetch``, the kernel is asked to read the next ``span`` files (``limit``
        by default), and at the end the ``span`` after the run, all together
        (POSIX_FADV_WILLNEED): one file at a time, a disk serves a fraction of the reads it
        can do at once. A ``span`` wider than ``limit`` keeps the disk as busy while each hop
        decodes fewer checkpoints (they are held until the loop has handed them on)."""
        span = limit if span is None else max(span, limit)
        contents: list[bytes] = []
        advised = prefetch and self._advise(start, start + span)
        waited = False  # some file was not in memory
        for n in range(start, start + limit):
            fd = self._open(n, not contents)
            if fd is None:
                break
            try:
                # Once the run is advised and known to wait, another probe tells nothing.
                probe = self.nowait is not None and not (advised and waited)
                in_memory = probe and self._in_memory(fd)
                if contents and not advised:
                    if in_memory:
                        break
                    advised = self._advise(n + 1, start + span)
                waited = waited or not in_memory
                data = self._read_all(fd)
            except OSError as exc:
                if contents:
                    break
                raise self._unreadable(n, exc) from None
            finally:
                os.close(fd)
            contents.append(data)
        if not contents:
            return FileRun([], None, 0, False)
        cold = len(contents) == limit and waited
        if cold and advised:  # the next run is likely read next: its disk reads start now
            self._advise(start + limit, start + limit + span)
        self.read_below = max(self.read_below, start + len(contents))
        batch, error = decoder.decode_run(contents, start, self.path)
        return FileRun(batch, error, len(contents), cold)

    def _advise(self, first: int, end: int) -> bool:
        """Have the kernel start reading files ``first`` to ``end - 1`` (up to a missing one)
        from the disk, all at once, skipping those advised already; False, doing nothing,
        where whether a file is in memory cannot be told or the advice does not exist."""
        if self.nowait is None or _WILLNEED is None:
            return False
        prefix = self.prefix
        for n in range(max(first, self._advised_below), end):
            try:
                fd = os.open(f"{prefix}{n}.chk", os.O_RDONLY)
            except OSError:
                break
            try:
                os.posix_fadvise(fd, 0, 0, _WILLNEED)
            except OSError:
                pass  # advice only: the read that follows waits if it must
            finally:
                os.close(fd)
            self._advised_below = n + 1
        return True

    def _in_memory(self, fd: int) -> bool:
        """Whether the start of ``fd`` is in memory: one byte read that does not wait."""
        assert self.nowait is not None
        try:
            os.preadv(fd, self._probe, 0, self.nowait)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED:
                raise
            self.nowait = None
            return False
        return True

    def _read_all(self, fd: int) -> bytes:
        """All of ``fd``, read into the thread's buffer and copied out at its size."""
        buffers, view = self._thread_buffers, self._thread_view
        count = os.preadv(fd, buffers, 0)
        if count < _READ_SIZE:
            return view[:count].tobytes()
        chunks = [view.tobytes()]  # a large checkpoint: read the rest
        offset = count
        while count := os.preadv(fd, buffers, offset):
            chunks.append(view[:count].tobytes())
            offset += count
        return b"".join(chunks)

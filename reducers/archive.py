"""ArchiveSink: checkpoints into zstandard-compressed bundle files, with a JSON index.

Layout of ``directory``: bundle ``bundle-{start:012d}.zst`` holds checkpoints ``start`` to
``start + checkpoints_per_bundle - 1`` (``start`` a multiple of ``checkpoints_per_bundle``); each
committed batch is appended to it as one zstd frame, so a bundle is a valid zstd stream
(``zstd -d`` works). A frame's content is a sequence of records, each a little-endian header
``(sequence_number: u64, length: u32)`` followed by the checkpoint's msgpack bytes.
``index.json`` lists every bundle's checkpoint range and, per frame, its byte offset, length and
first/last checkpoint, so a reader decompresses only the frame that holds the checkpoint it
wants. The index is replaced atomically (temp file, fsync, rename) after the frame is synced, and
it is the source of truth: bytes past a bundle's last indexed frame are discarded, and
checkpoints the index already covers are skipped, so replays after a crash store each
checkpoint once.
"""

from __future__ import annotations

import asyncio
import os
import struct
from bisect import bisect_right
from collections.abc import Iterator
from itertools import groupby
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import zstandard

from indexer import ConfigurationError, Reducer
from indexer.durable import write_atomically

INDEX_FILE = "index.json"
_HEADER = struct.Struct("<QI")  # sequence number, length of the checkpoint's bytes


class ArchivedCheckpoint(NamedTuple):
    """The message of ``workers.CheckpointArchiver``: a checkpoint's encoded msgpack bytes."""

    sequence_number: int
    data: bytes


class FrameEntry(msgspec.Struct):
    """One zstd frame of a bundle: where it is and which checkpoints it holds."""

    offset: int
    length: int
    first: int
    last: int


class BundleEntry(msgspec.Struct):
    """One bundle file, its checkpoint range and its frames in order."""

    file: str
    first: int
    last: int
    frames: list[FrameEntry] = msgspec.field(default_factory=list)

    @property
    def end(self) -> int:
        """Byte length of the indexed part of the file."""
        return self.frames[-1].offset + self.frames[-1].length if self.frames else 0


class ArchiveIndex(msgspec.Struct):
    """The contents of ``index.json``."""

    checkpoints_per_bundle: int
    bundles: list[BundleEntry] = msgspec.field(default_factory=list)
    version: int = 1

    @property
    def last(self) -> int | None:
        """The highest checkpoint stored, or None for an empty archive."""
        return self.bundles[-1].last if self.bundles else None


def bundle_name(start: int) -> str:
    return f"bundle-{start:012d}.zst"


def load_index(directory: str | os.PathLike[str]) -> ArchiveIndex | None:
    """The archive's index, or None when it has none yet."""
    try:
        data = (Path(directory) / INDEX_FILE).read_bytes()
    except FileNotFoundError:
        return None
    try:
        return msgspec.json.decode(data, type=ArchiveIndex)
    except msgspec.DecodeError as exc:
        raise ValueError(f"{Path(directory) / INDEX_FILE}: not an archive index: {exc}") from None


class ArchiveSink(Reducer[ArchivedCheckpoint]):
    """Appends each batch to its bundle as one zstd frame and records it in ``index.json``.

    A batch never spans two bundles (``should_close_batch``). Stored exactly once even though
    the watermark is saved separately: after a crash, a half-written frame is cut off and a
    batch the index already holds is skipped. A reset to a lower watermark does not rewrite the
    archive: checkpoints already stored are skipped. The index is rewritten on every commit, so
    prefer large batches (``max_batch_size`` defaults to ``checkpoints_per_bundle``).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        checkpoints_per_bundle: int = 1000,
        level: int = 3,
        **limits: Any,
    ) -> None:
        if not isinstance(checkpoints_per_bundle, int) or checkpoints_per_bundle < 1:
            raise ConfigurationError(
                f"ArchiveSink checkpoints_per_bundle must be a positive integer, "
                f"got {checkpoints_per_bundle!r}"
            )
        if not isinstance(level, int) or level > zstandard.MAX_COMPRESSION_LEVEL:
            raise ConfigurationError(
                f"ArchiveSink level must be an integer <= {zstandard.MAX_COMPRESSION_LEVEL}, "
                f"got {level!r}"
            )
        limits.setdefault("max_batch_size", checkpoints_per_bundle)
        super().__init__(**limits)
        self.directory = Path(directory)
        self.checkpoints_per_bundle = checkpoints_per_bundle
        self.level = level
        self._compressor = zstandard.ZstdCompressor(level=level)
        self._index: ArchiveIndex | None = None  # None: (re)load from disk before use

    def validate(self) -> None:
        super().validate()
        self._check(load_index(self.directory))

    def _check(self, index: ArchiveIndex | None) -> None:
        if index is not None and index.checkpoints_per_bundle != self.checkpoints_per_bundle:
            raise ConfigurationError(
                f"{self.directory}: archive has checkpoints_per_bundle="
                f"{index.checkpoints_per_bundle}, configured {self.checkpoints_per_bundle}"
            )

    def should_close_batch(
        self, batch: list[ArchivedCheckpoint], next_message: ArchivedCheckpoint
    ) -> bool:
        per = self.checkpoints_per_bundle
        return batch[-1].sequence_number // per != next_message.sequence_number // per

    def message_size(self, message: ArchivedCheckpoint) -> int:
        return _HEADER.size + len(message.data)

    async def commit(self, batch: list[ArchivedCheckpoint]) -> None:
        await asyncio.to_thread(self._commit, list(batch))

    def _commit(self, batch: list[ArchivedCheckpoint]) -> None:
        try:
            self._append(batch)
        except BaseException:
            self._index = None  # the files are the truth: reload them before the retry
            raise

    def _append(self, batch: list[ArchivedCheckpoint]) -> None:
        index = self._index
        if index is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            index = load_index(self.directory) or ArchiveIndex(self.checkpoints_per_bundle)
            self._check(index)
            self._index = index
        last = index.last
        fresh = [m for m in batch if last is None or m.sequence_number > last]
        if not fresh:
            return  # a replay of what the index already holds
        per = self.checkpoints_per_bundle
        for start, group in groupby(fresh, key=lambda m: m.sequence_number // per * per):
            messages = list(group)
            name = bundle_name(start)
            if index.bundles and index.bundles[-1].file == name:
                bundle = index.bundles[-1]
            else:
                bundle = BundleEntry(
                    name, messages[0].sequence_number, messages[-1].sequence_number
                )
                index.bundles.append(bundle)
            raw = b"".join(_HEADER.pack(m.sequence_number, len(m.data)) + m.data for m in messages)
            frame = self._compressor.compress(raw)
            end = bundle.end
            fd = os.open(self.directory / name, os.O_RDWR | os.O_CREAT, 0o644)
            with os.fdopen(fd, "r+b") as file:
                file.truncate(end)  # drop a frame a crash left half-written or unindexed
                file.seek(end)
                file.write(frame)
                file.flush()
                os.fsync(file.fileno())
            first, last_n = messages[0].sequence_number, messages[-1].sequence_number
            bundle.frames.append(FrameEntry(end, len(frame), first, last_n))
            bundle.last = last_n
        self._write_index(index)

    def _write_index(self, index: ArchiveIndex) -> None:
        """Replace ``index.json`` atomically and durably (which also makes a new bundle's
        directory entry durable)."""
        write_atomically(self.directory / INDEX_FILE, msgspec.json.encode(index))


class ArchiveReader:
    """Reads an archive written by ``ArchiveSink``: in order, or one checkpoint by number.

    ``get(n)`` decompresses only the frame holding ``n`` (the last frame read is kept). The
    index is read at construction; call ``refresh()`` to see later commits.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._decompressor = zstandard.ZstdDecompressor()
        self._cached: tuple[tuple[str, int], dict[int, bytes]] | None = None
        self.refresh()

    def refresh(self) -> None:
        """Re-read ``index.json``."""
        self.index = load_index(self.directory) or ArchiveIndex(checkpoints_per_bundle=0)
        self._bundle_firsts = [b.first for b in self.index.bundles]
        self._cached = None

    @property
    def first(self) -> int | None:
        return self.index.bundles[0].first if self.index.bundles else None

    @property
    def last(self) -> int | None:
        return self.index.last

    def _frame(self, bundle: BundleEntry, frame: FrameEntry) -> bytes:
        with open(self.directory / bundle.file, "rb") as file:
            file.seek(frame.offset)
            data = file.read(frame.length)
        if len(data) != frame.length:
            raise ValueError(f"{self.directory / bundle.file}: truncated at {frame.offset}")
        return self._decompressor.decompress(data)

    def records(self) -> Iterator[ArchivedCheckpoint]:
        """Every stored checkpoint, in order."""
        for bundle in self.index.bundles:
            for frame in bundle.frames:
                yield from _split(self._frame(bundle, frame))

    def __iter__(self) -> Iterator[bytes]:
        return (record.data for record in self.records())

    def get(self, n: int) -> bytes:
        """The encoded bytes of checkpoint ``n``; KeyError when the archive lacks it."""
        bundles = self.index.bundles
        b = bisect_right(self._bundle_firsts, n) - 1
        if b < 0 or n > bundles[b].last:
            raise KeyError(n)
        bundle = bundles[b]
        f = bisect_right([frame.first for frame in bundle.frames], n) - 1
        if f < 0 or n > bundle.frames[f].last:
            raise KeyError(n)
        frame = bundle.frames[f]
        key = (bundle.file, frame.offset)
        if self._cached is None or self._cached[0] != key:
            records = {r.sequence_number: r.data for r in _split(self._frame(bundle, frame))}
            self._cached = (key, records)
        return self._cached[1][n]  # KeyError for a gap (a skipped checkpoint)

    def __contains__(self, n: object) -> bool:
        if not isinstance(n, int):
            return False
        try:
            self.get(n)
        except KeyError:
            return False
        return True


def _split(raw: bytes) -> Iterator[ArchivedCheckpoint]:
    view, offset, header = memoryview(raw), 0, _HEADER.size
    while offset < len(raw):
        n, length = _HEADER.unpack_from(raw, offset)
        offset += header
        yield ArchivedCheckpoint(n, bytes(view[offset : offset + length]))
        offset += length


def read_archive(directory: str | os.PathLike[str]) -> Iterator[bytes]:
    """Every checkpoint's encoded bytes stored in the archive at ``directory``, in order."""
    return iter(ArchiveReader(directory))

"""JsonlSink: rows appended as JSON lines to a file that rotates at a size limit."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import msgspec

from indexer import ConfigurationError, Reducer
from indexer.durable import fsync_directory

_CHUNK = 64 * 1024


def rotated_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files a JsonlSink on ``path`` wrote, oldest first: ``path.1``, ``path.2``, ...,
    then ``path`` itself (those that exist)."""
    path = Path(path)
    files = [entry for _, entry in _numbered(path)]
    return [*files, path] if path.exists() else files


def _numbered(path: Path) -> list[tuple[int, Path]]:
    """The rotated ``path.N`` files as ``(N, file)``, sorted by N."""
    pattern = re.compile(re.escape(path.name) + r"\.(\d+)")
    numbered = []
    if path.parent.is_dir():
        for entry in path.parent.iterdir():
            match = pattern.fullmatch(entry.name)
            if match:
                numbered.append((int(match.group(1)), entry))
    return sorted(numbered)


def _is_namedtuple(value: Any) -> bool:
    return isinstance(value, tuple) and hasattr(type(value), "_fields")


class JsonlSink(Reducer[Any]):
    """Appends each message (a list of rows, or one row) as JSON lines to ``path``.

    Rows are encoded with msgspec: NamedTuples as objects keyed by their field names, Structs
    as objects, anything else as msgspec encodes it. With ``fields`` (names, such as a worker's
    ``columns``), tuple and list rows are objects keyed by them too (``TransactionExtractor``
    emits plain tuples: ``fields = ["checkpoint", "digest", ...]``). Every commit is flushed
    and fsync'd. When the next line would take the file past ``max_file_bytes`` it is renamed
    ``path.N`` (N one higher than any existing: the newest has the highest number) and a new
    file is started; a line larger than the limit gets a file of its own.
    ``rotated_files(path)`` lists them.

    Delivery is at-least-once: a crash between a commit and the watermark save writes that batch
    again on restart. A line a crash cut short is removed when the file is next opened.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_file_bytes: int = 256 * 1024 * 1024,
        fields: Sequence[str] | None = None,
        **limits: Any,
    ) -> None:
        super().__init__(**limits)
        if fields is not None and (
            isinstance(fields, str) or not all(isinstance(f, str) for f in fields)
        ):
            raise ConfigurationError(f"JsonlSink fields must be a list of names, got {fields!r}")
        if not isinstance(max_file_bytes, int) or max_file_bytes < 1:
            raise ConfigurationError(
                f"JsonlSink max_file_bytes must be a positive integer, got {max_file_bytes!r}"
            )
        self.path = Path(path)
        self.max_file_bytes = max_file_bytes
        self.fields = None if fields is None else tuple(fields)
        self._encoder = msgspec.json.Encoder()
        self._file: IO[bytes] | None = None
        self._size = 0

    def _lines(self, batch: list[Any]) -> Iterator[bytes]:
        encode, fields = self._encoder.encode, self.fields
        for message in batch:
            for row in message if isinstance(message, list) else (message,):
                if _is_namedtuple(row):
                    row = row._asdict()
                elif fields is not None and isinstance(row, tuple | list):
                    if len(row) != len(fields):
                        raise ValueError(
                            f"JsonlSink: a row of {len(row)} values for {len(fields)} fields: "
                            f"{row!r}"
                        )
                    row = dict(zip(fields, row, strict=True))
                yield encode(row) + b"\n"

    async def commit(self, batch: list[Any]) -> None:
        lines = list(self._lines(batch))  # encode first: a bad row writes nothing
        await asyncio.to_thread(self._write, lines)

    def _write(self, lines: list[bytes]) -> None:
        file = self._open()
        start, rotated = self._size, False
        try:
            pending: list[bytes] = []
            for line in lines:
                if self._size and self._size + len(line) > self.max_file_bytes:
                    file.writelines(pending)
                    pending.clear()
                    file, rotated = self._rotate(file), True
                pending.append(line)
                self._size += len(line)
            file.writelines(pending)
            self._sync(file)
        except BaseException:
            self._abandon(None if rotated else start)
            raise

    def _abandon(self, size: int | None) -> None:
        """After a failed write: close the file, cut it back to ``size`` (when the failure did
        not rotate it), and let the next commit reopen it."""
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                if size is not None:
                    file.truncate(size)
                file.close()

    def _open(self) -> IO[bytes]:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            file = open(self.path, "a+b")  # noqa: SIM115 - kept open until close()
            try:
                self._size = _drop_partial_line(file)
            except BaseException:
                file.close()
                raise
            self._file = file
        return self._file

    def _rotate(self, file: IO[bytes]) -> IO[bytes]:
        """Sync and close the full file, rename it ``path.N``, open a new one."""
        self._sync(file)
        file.close()
        self._file = None
        number = max((n for n, _ in _numbered(self.path)), default=0) + 1
        os.replace(self.path, self.path.with_name(f"{self.path.name}.{number}"))
        fsync_directory(self.path.parent)
        return self._open()

    @staticmethod
    def _sync(file: IO[bytes]) -> None:
        file.flush()
        os.fsync(file.fileno())

    async def close(self) -> None:
        """Close the file, if it is open."""
        if self._file is not None:
            file, self._file = self._file, None
            await asyncio.to_thread(file.close)


def _drop_partial_line(file: IO[bytes]) -> int:
    """Truncate ``file`` after its last newline (a torn write); returns its size."""
    size = file.seek(0, os.SEEK_END)
    end = size
    while end > 0:
        start = max(0, end - _CHUNK)
        file.seek(start)
        newline = file.read(end - start).rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    if end != size:
        file.truncate(end)
        file.flush()
        os.fsync(file.fileno())
    file.seek(0, os.SEEK_END)
    return end

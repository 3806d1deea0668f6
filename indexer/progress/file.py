"""A progress store in one JSON file, rewritten atomically whenever it changes."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

import msgspec

from ..durable import write_atomically
from ..errors import PipelineHeld, ProgressStoreError
from ._base import DeadLetter, ProgressStore, Stall


class _ProgressFile(msgspec.Struct):
    """The file's layout: ``{"watermarks": {pipeline: int}, "dead_letters": [...],
    "stalls": [...], "pruned_below": {pipeline: int}}`` (a file an earlier version wrote has
    no stalls or marks)."""

    watermarks: dict[str, int] = msgspec.field(default_factory=dict)
    dead_letters: list[DeadLetter] = msgspec.field(default_factory=list)
    stalls: list[Stall] = msgspec.field(default_factory=list)
    pruned_below: dict[str, int] = msgspec.field(default_factory=dict)


_decoder = msgspec.json.Decoder(_ProgressFile)

_DeadLetters = dict[tuple[str, int], DeadLetter]
_Stalls = dict[tuple[str, int], Stall]


class FileProgressStore(ProgressStore):
    """Watermarks, dead letters, stalls and pruned-below marks in a JSON file, for runs
    without a database.

    The file is read once (on ``open`` or the first call) and then kept in memory; every change
    replaces it atomically (temp file, fsync, rename, fsync of the directory), so a crash leaves
    either the old or the new file. A missing or empty file is a fresh start; a corrupt one raises
    :class:`ProgressStoreError` and is never overwritten. One process should own the file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._watermarks: dict[str, int] | None = None
        self._dead_letters: _DeadLetters = {}
        self._stalls: _Stalls = {}
        self._pruned: dict[str, int] = {}

    async def open(self) -> None:
        """Read the file (once), so that a corrupt file is reported at start-up."""
        self._loaded()
        await super().open()

    async def close(self) -> None:
        """Forget the in-memory copy; the next use reads the file again."""
        self._watermarks = None
        self._dead_letters = {}
        self._stalls = {}
        self._pruned = {}
        await super().close()

    @asynccontextmanager
    async def hold(
        self,
        pipelines: Sequence[str],
        *,
        owner: str,
        ttl: float,
        on_lost: Callable[[str, str], None],
    ) -> AsyncIterator[ProgressStore]:
        """One writer at a time: an OS lock (``flock``) on ``PATH.lock``, which the OS frees when
        its holder ends, however it ends; the lock file names the holder. Without ``fcntl``
        (Windows) nothing is held."""
        if fcntl is None:
            yield self
            return
        lock = self.path.with_name(f"{self.path.name}.lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another run"
                names = ", ".join(map(repr, pipelines))
                raise PipelineHeld(
                    f"progress file {self.path} (pipelines {names}) is held by {holder}; "
                    "stop it first"
                ) from None
            since = time.strftime("%H:%M:%S")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{owner} since {since}\n".encode(), 0)
            try:
                yield self
            finally:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    async def load(self, pipeline: str) -> int | None:
        """The pipeline's watermark, or None when it has never saved one."""
        return self._loaded().get(pipeline)

    async def save(self, pipeline: str, watermark: int) -> int:
        """Raise the watermark and rewrite the file; otherwise write nothing."""
        watermarks = self._loaded()
        current = watermarks.get(pipeline)
        if current is not None and watermark <= current:
            return current
        self._write({**watermarks, pipeline: watermark})
        return watermark

    async def reset(self, pipeline: str, watermark: int) -> None:
        """Set the watermark to any value, lower included, forget the pipeline's stalls,
        lower its pruned-below mark to the watermark, and rewrite the file."""
        watermarks = self._loaded()
        stalls = {k: v for k, v in self._stalls.items() if k[0] != pipeline}
        pruned = dict(self._pruned)
        if pruned.get(pipeline, 0) > watermark:
            pruned[pipeline] = watermark
        if (
            watermarks.get(pipeline) != watermark
            or stalls != self._stalls
            or pruned != self._pruned
        ):
            self._write({**watermarks, pipeline: watermark}, stalls=stalls, pruned=pruned)

    async def drop(self, pipeline: str) -> None:
        """Forget the pipeline's watermark, dead letters, stalls and pruned-below mark, and
        rewrite the file."""
        watermarks = {k: v for k, v in self._loaded().items() if k != pipeline}
        letters = {k: v for k, v in self._dead_letters.items() if k[0] != pipeline}
        stalls = {k: v for k, v in self._stalls.items() if k[0] != pipeline}
        pruned = {k: v for k, v in self._pruned.items() if k != pipeline}
        self._write(watermarks, letters, stalls, pruned)

    async def watermarks(self) -> dict[str, int]:
        """A copy of every pipeline's watermark."""
        return dict(self._loaded())

    async def add_dead_letter(self, pipeline: str, sequence_number: int, error: str) -> None:
        """Record a skipped checkpoint (replacing an earlier record of it) and rewrite the file."""
        watermarks = self._loaded()
        letter = DeadLetter(pipeline, sequence_number, error)
        self._write(watermarks, {**self._dead_letters, (pipeline, sequence_number): letter})

    async def report_stall(self, stall: Stall) -> None:
        """Record a stall (replacing an earlier record of its checkpoint); rewrite the file."""
        watermarks = self._loaded()
        self._write(watermarks, stalls={**self._stalls, (stall.pipeline, stall.checkpoint): stall})

    async def clear_stall(self, pipeline: str, checkpoint: int) -> None:
        """Forget the stall of ``pipeline`` at ``checkpoint``; rewrite the file if there was
        one."""
        watermarks = self._loaded()
        if (pipeline, checkpoint) in self._stalls:
            stalls = {k: v for k, v in self._stalls.items() if k != (pipeline, checkpoint)}
            self._write(watermarks, stalls=stalls)

    async def stalls(self, pipeline: str | None = None) -> list[Stall]:
        """Stalls of one pipeline or all, sorted by checkpoint then pipeline."""
        self._loaded()
        return [s for s in _sorted(self._stalls) if pipeline is None or s.pipeline == pipeline]

    async def record_pruned(self, pipeline: str, below: int) -> None:
        """Raise the pipeline's pruned-below mark (never lower it); rewrite the file if it
        rose."""
        watermarks = self._loaded()
        if below > self._pruned.get(pipeline, -1):
            self._write(watermarks, pruned={**self._pruned, pipeline: below})

    async def pruned_below(self, pipeline: str) -> int | None:
        """The pipeline's pruned-below mark, or None."""
        self._loaded()
        return self._pruned.get(pipeline)

    async def dead_letters(self, pipeline: str | None = None) -> list[DeadLetter]:
        """Dead letters of one pipeline or all, sorted by sequence number then pipeline."""
        self._loaded()
        return [
            d for d in _sorted(self._dead_letters) if pipeline is None or d.pipeline == pipeline
        ]

    def _loaded(self) -> dict[str, int]:
        """The in-memory watermarks, reading the file on first use."""
        if self._watermarks is None:
            content = self._read()
            self._dead_letters = {(d.pipeline, d.sequence_number): d for d in content.dead_letters}
            self._stalls = {(s.pipeline, s.checkpoint): s for s in content.stalls}
            self._pruned = dict(content.pruned_below)
            self._watermarks = dict(content.watermarks)
        return self._watermarks

    def _read(self) -> _ProgressFile:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return _ProgressFile()
        except OSError as exc:
            raise ProgressStoreError(
                f"{self.path}: cannot read progress file: {exc.strerror or exc}"
            ) from exc
        if not raw.strip():
            return _ProgressFile()
        try:
            return _decoder.decode(raw)
        except msgspec.DecodeError as exc:  # ValidationError is a subclass
            reason = " ".join(str(exc).split())
            raise ProgressStoreError(f"{self.path}: not a valid progress file: {reason}") from exc

    def _write(
        self,
        watermarks: dict[str, int],
        dead_letters: _DeadLetters | None = None,
        stalls: _Stalls | None = None,
        pruned: dict[str, int] | None = None,
    ) -> None:
        """Replace the file with the new state (the dead letters, stalls and marks in memory
        unless given), then adopt it in memory (only if that worked)."""
        dead_letters = self._dead_letters if dead_letters is None else dead_letters
        stalls = self._stalls if stalls is None else stalls
        pruned = self._pruned if pruned is None else pruned
        content = _ProgressFile(
            watermarks=watermarks,
            dead_letters=_sorted(dead_letters),
            stalls=_sorted(stalls),
            pruned_below=dict(sorted(pruned.items())),
        )
        data = msgspec.json.format(msgspec.json.encode(content), indent=2) + b"\n"
        try:
            write_atomically(self.path, data)
        except OSError as exc:
            raise ProgressStoreError(
                f"{self.path}: cannot write progress file: {exc.strerror or exc}"
            ) from exc
        self._watermarks = watermarks
        self._dead_letters = dead_letters
        self._stalls = stalls
        self._pruned = pruned


_Record = TypeVar("_Record", DeadLetter, Stall)


def _sorted(records: dict[tuple[str, int], _Record]) -> list[_Record]:
    """Records keyed by ``(pipeline, checkpoint)``, by checkpoint then pipeline."""
    return [records[key] for key in sorted(records, key=lambda key: (key[1], key[0]))]

"""Exceptions the framework raises. Each message is one line naming what was wrong and where."""

from __future__ import annotations


class IndexerError(Exception):
    """Base class of every error the framework raises on purpose."""


class ConfigurationError(IndexerError, ValueError):
    """A setting is invalid or two settings contradict each other (exit code 2 in the CLI).

    ``key`` names the setting when the error is about one (``"concurrency"``) and ``where``
    what holds it (``"pipeline 'swaps'"``): the message reads ``where: key message``. The
    configuration layer names the same setting as its file spells it with ``at``.
    """

    def __init__(self, message: str, *, key: str | None = None, where: str | None = None) -> None:
        self.message = message
        self.key = key
        self.where = where
        text = f"{key} {message}" if key else message
        super().__init__(f"{where}: {text}" if where else text)

    def at(self, origin: str, prefix: str) -> ConfigurationError:
        """The same error named as a file does: ``origin: prefix.key message`` when it is about
        a key, else ``origin: prefix: message`` (with the holder it names)."""
        if self.key is not None:
            return ConfigurationError(self.message, key=f"{prefix}.{self.key}", where=origin)
        return ConfigurationError(str(self), where=f"{origin}: {prefix}")


class CheckpointDecodeError(IndexerError):
    """A checkpoint's bytes are corrupt, truncated, or hold another sequence number."""


class FeedReadError(IndexerError):
    """A feed file or object exists but cannot be read (permissions, a directory, I/O error)."""


class ProgressStoreError(IndexerError):
    """The progress store cannot be read or written (for example a corrupt progress file)."""


class StoreBusy(ProgressStoreError):
    """Another process held the store's database locked for longer than the wait allowed
    (SQLite's busy timeout): no one could write meanwhile, so nothing was lost or taken."""


class FencingError(IndexerError):
    """A write was refused because the writer no longer holds what entitles it to write (a
    lease taken over, or released): retrying cannot help, the writer must stop."""


class AlreadyCommitted(IndexerError):
    """A retried commit found its batch committed already: the store's position covers it
    (the reply to an earlier attempt's COMMIT was lost). There is nothing left to write."""

    @classmethod
    def check(cls, pipeline: str, stored: int | None, upto: int) -> None:
        """Raise when the stored position ``stored`` already covers a commit up to ``upto``."""
        if stored is not None and stored >= upto:
            raise cls(
                f"pipeline {pipeline!r}: the commit up to {upto} was committed already "
                f"(stored position {stored})"
            )


class PipelineHeld(ConfigurationError):
    """Another writer holds a pipeline this run would write (one writer per pipeline); the
    message names it. Exit code 2: the run refuses at start, having written nothing."""


class PipelineHalted(IndexerError):
    """A pipeline stopped on an error it may not skip; its watermark stays below the failure."""

    def __init__(self, pipeline: str, message: str, sequence_number: int | None = None) -> None:
        super().__init__(f"pipeline {pipeline!r}: {message}")
        self.pipeline = pipeline
        self.sequence_number = sequence_number


class FeedEndedEarly(IndexerError):
    """A finite source (``follow = false``, a missing file) ended before the run's last
    checkpoint: ``missing`` is the first checkpoint it did not deliver. Everything read before
    it was committed; ``watermarks`` are the pipelines' saved watermarks as the run left them
    (exit code 1: a run asked to reach ``last`` did not, and a script must not take it as
    done). ``where`` names the part of the job that ended, instead of the watermarks, when
    other processes may be moving them (a chunk)."""

    def __init__(
        self, missing: int, last: int, watermarks: dict[str, int], where: str | None = None
    ) -> None:
        marks = ", ".join(f"{name}={mark}" for name, mark in watermarks.items())
        super().__init__(
            f"the feed ended before last_checkpoint {last}: checkpoint {missing} is missing "
            f"({where or f'watermarks: {marks}'})"
        )
        self.missing = missing
        self.last = last
        self.watermarks = watermarks


class ShutdownAborted(IndexerError):
    """A second stop signal ended the run at once; saved progress is intact but may lag."""


def failure_exit(exc: BaseException) -> tuple[int, str] | None:
    """The exit code and one-line message the command reports ``exc`` with, or None for an
    error that deserves its traceback (a bug): 2 for a configuration error, else 1."""
    if isinstance(exc, ConfigurationError):
        return 2, str(exc)
    if isinstance(exc, IndexerError):
        return 1, str(exc)
    if isinstance(exc, OSError):
        return 1, f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
    return None

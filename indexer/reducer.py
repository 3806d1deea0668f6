"""The Reducer: what a user subclasses to commit a pipeline's messages in batches."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec

from .errors import ConfigurationError
from .retry import RetryPolicy

MessageT = TypeVar("MessageT")

__all__ = ["Reducer", "TransactionalReducer"]

_UNSET: Any = object()
_size_encoder = msgspec.msgpack.Encoder()


class Reducer(Generic[MessageT]):
    """Receives a pipeline's messages in checkpoint order and commits them in batches.

    A batch closes when it holds ``max_batch_size`` messages, when adding the next message would
    pass ``max_batch_bytes`` (a hard cap: a single larger message is a batch of its own), when
    ``max_batch_age`` seconds have passed since its first message (a wall-clock timer, even if no
    other message comes), when ``should_close_batch`` says so, or at shutdown. An empty batch is
    never committed. A failed ``commit`` is retried with ``commit_retry``; nothing after it is
    committed until it succeeds, and the watermark is saved only after the commit that covers it.
    Limits may be class attributes or keyword arguments; ``None`` disables one.
    """

    max_batch_size: int | None = 1000
    max_batch_bytes: int | None = None
    max_batch_age: float | None = 1.0
    commit_retry: RetryPolicy = RetryPolicy(initial=0.2, max_delay=10.0)

    def __init__(
        self,
        *,
        max_batch_size: int | None = _UNSET,
        max_batch_bytes: int | None = _UNSET,
        max_batch_age: float | None = _UNSET,
        commit_retry: RetryPolicy = _UNSET,
    ) -> None:
        if max_batch_size is not _UNSET:
            self.max_batch_size = max_batch_size
        if max_batch_bytes is not _UNSET:
            self.max_batch_bytes = max_batch_bytes
        if max_batch_age is not _UNSET:
            self.max_batch_age = max_batch_age
        if commit_retry is not _UNSET:
            self.commit_retry = commit_retry

    async def commit(self, batch: list[MessageT]) -> None:
        """Write ``batch`` (never empty, in checkpoint order) durably; raise to have it retried."""
        raise NotImplementedError(f"{type(self).__name__} must implement commit")

    def should_close_batch(self, batch: list[MessageT], next_message: MessageT) -> bool:
        """Return True to commit ``batch`` before ``next_message`` joins it (default: never)."""
        return False

    def message_size(self, message: MessageT) -> int:
        """The size counted against ``max_batch_bytes`` (default: its msgpack length)."""
        if isinstance(message, bytes | bytearray | str):
            return len(message)
        return len(_size_encoder.encode(message))

    async def close(self) -> None:
        """Release connections or files; called once when the pipeline ends."""

    def check_store(self, store: Any) -> None:
        """Raise ConfigurationError when this reducer cannot work with the progress ``store``;
        called when the pipeline starts, so that a wrong pairing fails before any work."""

    def uses_store_transaction(self, store: Any) -> bool:
        """True when batches go through ``commit_in_transaction`` inside the progress store's
        transaction (exactly-once); False for ``commit`` followed by a watermark save."""
        return False

    async def commit_in_transaction(self, connection: Any, batch: list[MessageT]) -> None:
        """Write ``batch`` with the store's ``connection``; do not commit or roll back."""
        raise NotImplementedError(f"{type(self).__name__} must implement commit_in_transaction")

    def enable_pruning(self) -> None:
        """Get ready for ``prune`` (a pipeline with a ``retention`` calls this when it is
        built); raise ConfigurationError when this reducer cannot prune: by default, unless
        its class implements ``prune``."""
        if type(self).prune is Reducer.prune:
            raise ConfigurationError(f"{type(self).__name__} cannot prune its rows")

    async def prune(self, below: int, store: Any) -> int:
        """Delete what was committed for checkpoints below ``below`` (a pipeline's retention)
        in bounded chunks, each short, so that commits never wait long; return how many rows
        went. ``store`` is the progress store (a sink sharing its database prunes there). A
        prune cut short by a failure or a kill is called again: delete what is left."""
        raise NotImplementedError(f"{type(self).__name__} cannot prune its rows")

    def validate(self) -> None:
        """Raise ConfigurationError for limits that make no sense."""
        name = type(self).__name__
        for key in ("max_batch_size", "max_batch_bytes"):
            value = getattr(self, key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ConfigurationError(
                    f"must be a positive integer, got {value!r}", key=key, where=name
                )
        age = self.max_batch_age
        if age is not None and not age > 0:
            raise ConfigurationError(
                f"must be > 0 seconds, got {age!r}", key="max_batch_age", where=name
            )


class TransactionalReducer(Reducer[MessageT]):
    """A Reducer whose batch and watermark commit in one transaction of the progress store.

    It needs a ``TransactionalProgressStore`` (SQLite or PostgreSQL); the executor hands
    ``commit_in_transaction`` the store's connection inside a transaction that also raises the
    watermark, so after a crash each checkpoint's writes are there exactly once. The connection
    goes back to the store afterwards: change no session state on it (``SET LOCAL``, not
    ``SET``; no ``LISTEN`` or session advisory locks).
    """

    def uses_store_transaction(self, store: Any) -> bool:
        return True

    async def commit(self, batch: list[MessageT]) -> None:
        raise ConfigurationError(
            f"{type(self).__name__} is transactional and needs a transactional progress store"
        )

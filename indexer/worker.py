"""The Worker: what a user subclasses to turn one checkpoint into one message."""

from __future__ import annotations

import typing
from typing import Any, ClassVar, Generic, TypeVar

import msgspec

from .checkpoint import Checkpoint

CheckpointT = TypeVar("CheckpointT")
MessageT = TypeVar("MessageT")

__all__ = ["Retry", "Worker"]


class Retry(Exception):
    """Raised by ``process_checkpoint`` to be run again ``after`` seconds, without counting as a
    failure. A short wait keeps the worker's slot; a long one gives it back until it is due."""

    def __init__(self, after: float, reason: str = "") -> None:
        if after < 0:
            raise ValueError(f"Retry(after=...) must be >= 0 seconds, got {after}")
        super().__init__(reason or f"retry after {after}s")
        self.after = after
        self.reason = reason


class Worker(Generic[CheckpointT, MessageT]):
    """Processes checkpoints of one pipeline.

    Subclass it and implement ``process_checkpoint``; its return value is the message handed to
    the pipeline's Reducer (``None`` contributes nothing). Calls run concurrently and complete out
    of order, up to the pool's ``concurrency``. ``preprocess_hook`` runs once per checkpoint, in
    sequence order, before dispatch. ``name`` names the pipeline (default: the class name).

    The checkpoint type is ``Checkpoint`` unless the subclass is parameterised with another
    msgspec Struct (``class MyWorker(Worker[MyCheckpoint, Row])``) or sets ``checkpoint_type``.
    """

    name: str = ""
    checkpoint_type: ClassVar[type[Any]] = Checkpoint

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "checkpoint_type" in cls.__dict__:
            return
        for base in getattr(cls, "__orig_bases__", ()):
            if typing.get_origin(base) is Worker:
                arg = typing.get_args(base)[0]
                if isinstance(arg, type) and issubclass(arg, msgspec.Struct):
                    cls.checkpoint_type = arg

    @property
    def pipeline_name(self) -> str:
        """The pipeline's name: ``name`` if set, else the class name."""
        return self.name or type(self).__name__

    async def process_checkpoint(self, checkpoint: CheckpointT) -> MessageT:
        """Turn one checkpoint into one message. Exceptions are retried per the RetryPolicy."""
        raise NotImplementedError(f"{type(self).__name__} must implement process_checkpoint")

    def preprocess_hook(self, checkpoint: CheckpointT) -> None:
        """Runs synchronously, once per checkpoint, in sequence order, before dispatch.

        An exception here halts the pipeline (it is not retried)."""

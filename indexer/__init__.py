"""indexer: parallel, crash-safe indexing of ordered checkpoint streams.

Subclass ``Worker`` (and optionally ``Reducer``), wrap it in a ``WorkerPool``, register the pool
with an ``IndexerExecutor`` and run it over a checkpoint source.

The names below are loaded on first use, so that ``import indexer`` (and the ``indexer``
command's start-up) costs only what is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_attributes

if TYPE_CHECKING:
    from .checkpoint import Checkpoint, Event, Transaction
    from .errors import (
        CheckpointDecodeError,
        ConfigurationError,
        FeedEndedEarly,
        FeedReadError,
        IndexerError,
        PipelineHalted,
        ProgressStoreError,
        ShutdownAborted,
    )
    from .executor import IndexerExecutor
    from .pipeline import WorkerPool
    from .reducer import Reducer, TransactionalReducer
    from .retry import RetryPolicy
    from .worker import Retry, Worker

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_HOMES = {
    "Checkpoint": ".checkpoint",
    "Event": ".checkpoint",
    "Transaction": ".checkpoint",
    "CheckpointDecodeError": ".errors",
    "ConfigurationError": ".errors",
    "FeedEndedEarly": ".errors",
    "FeedReadError": ".errors",
    "IndexerError": ".errors",
    "PipelineHalted": ".errors",
    "ProgressStoreError": ".errors",
    "ShutdownAborted": ".errors",
    "IndexerExecutor": ".executor",
    "WorkerPool": ".pipeline",
    "Reducer": ".reducer",
    "TransactionalReducer": ".reducer",
    "RetryPolicy": ".retry",
    "Retry": ".worker",
    "Worker": ".worker",
}

__all__ = [
    "Checkpoint",
    "CheckpointDecodeError",
    "ConfigurationError",
    "Event",
    "FeedEndedEarly",
    "FeedReadError",
    "IndexerError",
    "IndexerExecutor",
    "PipelineHalted",
    "ProgressStoreError",
    "Reducer",
    "Retry",
    "RetryPolicy",
    "ShutdownAborted",
    "Transaction",
    "TransactionalReducer",
    "Worker",
    "WorkerPool",
    "__version__",
]

__getattr__ = lazy_attributes(__name__, _HOMES)


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])

"""indexer: parallel, crash-safe indexing of ordered checkpoint streams.

Subclass ``Worker`` (and optionally ``Reducer``), wrap it in a ``WorkerPool``, register the pool
with an ``IndexerExecutor`` and run it over a checkpoint source.
"""

from .checkpoint import Checkpoint, Event, Transaction
from .errors import (
    CheckpointDecodeError,
    ConfigurationError,
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

__all__ = [
    "Checkpoint",
    "CheckpointDecodeError",
    "ConfigurationError",
    "Event",
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

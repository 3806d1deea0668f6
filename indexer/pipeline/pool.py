"""WorkerPool: what a user configures of one pipeline, checked when it is built."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from ..errors import ConfigurationError
from ..reducer import Reducer
from ..retry import RetryPolicy
from ..worker import Worker

CheckpointT = TypeVar("CheckpointT")
MessageT = TypeVar("MessageT")

__all__ = ["WorkerPool"]


class WorkerPool(Generic[CheckpointT, MessageT]):
    """A pipeline: a Worker run ``concurrency`` at a time, and an optional Reducer.

    ``max_inflight`` (and optionally ``max_inflight_bytes``, counted in encoded checkpoint bytes)
    bounds the checkpoints read but not yet committed; the shared reader waits while it is full.
    A ``Retry(after=...)`` longer than ``reschedule_threshold`` seconds gives the task slot back.
    Without a reducer the watermark is saved at most every ``progress_interval`` seconds.
    With ``retention`` (checkpoints) the reducer keeps only the newest ones' rows: in the
    background, at most every ``retention_interval`` seconds, it prunes (``Reducer.prune``)
    those of checkpoints below ``watermark - retention``.

    A pool is a description, checked here and never changed by running it: each run of the
    pipeline (``IndexerExecutor.run``, or one chunk of a scaled-out job) builds its own
    ``PipelineRun`` from it.
    """

    def __init__(
        self,
        worker: Worker[CheckpointT, MessageT],
        *,
        concurrency: int = 1,
        reducer: Reducer[MessageT] | None = None,
        retry: RetryPolicy | None = None,
        name: str | None = None,
        max_inflight: int | None = None,
        max_inflight_bytes: int | None = None,
        reschedule_threshold: float = 1.0,
        progress_interval: float = 0.5,
        retention: int | None = None,
        retention_interval: float = 60.0,
    ) -> None:
        self.worker = worker
        self.name = name or worker.pipeline_name
        where = f"pipeline {self.name!r}"
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(
                f"must be at least 1, got {concurrency!r}", key="concurrency", where=where
            )
        if reducer is not None:
            reducer.validate()
        batch_size = reducer.max_batch_size if reducer is not None else None
        if max_inflight is None:
            max_inflight = max(1024, 4 * concurrency, 2 * (batch_size or 0))
        if max_inflight < 1:
            raise ConfigurationError(
                f"must be at least 1, got {max_inflight}", key="max_inflight", where=where
            )
        if max_inflight_bytes is not None and max_inflight_bytes < 1:
            raise ConfigurationError(
                f"must be positive, got {max_inflight_bytes}",
                key="max_inflight_bytes",
                where=where,
            )
        if batch_size is not None and batch_size > max_inflight:
            raise ConfigurationError(
                f"reducer max_batch_size {batch_size} can never fill: at most "
                f"max_inflight={max_inflight} checkpoints are in flight; raise max_inflight or "
                "lower max_batch_size",
                where=where,
            )
        for key, value in (
            ("reschedule_threshold", reschedule_threshold),
            ("progress_interval", progress_interval),
        ):
            if value < 0:
                raise ConfigurationError(f"must be >= 0, got {value}", key=key, where=where)
        _check_retention(reducer, retention, retention_interval, where)
        self.concurrency = concurrency
        self.reducer = reducer
        self.retry = retry or RetryPolicy()
        self.max_inflight = max_inflight
        self.max_inflight_bytes = max_inflight_bytes
        self.reschedule_threshold = reschedule_threshold
        self.progress_interval = progress_interval
        self.retention = retention
        self.retention_interval = retention_interval

    def __repr__(self) -> str:
        return f"WorkerPool({self.name!r}, concurrency={self.concurrency})"

    @property
    def checkpoint_type(self) -> type[Any]:
        """The type the worker reads; every pipeline of one executor must read the same."""
        return self.worker.checkpoint_type


def _check_retention(
    reducer: Reducer[Any] | None, retention: int | None, interval: float, where: str
) -> None:
    """Refuse a retention below one checkpoint, or one whose reducer cannot prune (which is
    told to get ready for it otherwise), and an interval that is not positive."""
    if not interval > 0:
        raise ConfigurationError(
            f"must be > 0 seconds, got {interval!r}", key="retention_interval", where=where
        )
    if retention is None:
        return
    if isinstance(retention, bool) or not isinstance(retention, int) or retention < 1:
        raise ConfigurationError(
            f"must be at least 1 checkpoint, got {retention!r}", key="retention", where=where
        )
    if reducer is None:
        raise ConfigurationError(
            "is set, but the pipeline has no reducer: there are no rows to prune",
            key="retention",
            where=where,
        )
    try:
        reducer.enable_pruning()
    except ConfigurationError as exc:
        raise ConfigurationError(f"is set, but {exc}", key="retention", where=where) from None

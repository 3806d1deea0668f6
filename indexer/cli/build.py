"""Builds the runtime objects a configuration describes: store, source, pools, executor."""

from __future__ import annotations

import inspect
from typing import Any

from ..claims import ClaimStore
from ..errors import ConfigurationError
from ..executor import IndexerExecutor
from ..pipeline import WorkerPool
from ..progress import FileProgressStore, MemoryProgressStore, ProgressStore, SqliteProgressStore
from ..reducer import Reducer
from ..retry import RetryPolicy
from ..sources import CheckpointSource, LocalDirectorySource, SyntheticSource
from ..worker import Worker
from .config import (
    POSTGRES_SCHEMES,
    Config,
    PipelineConfig,
    config_origin,
    import_object,
    resolve_path,
)

__all__ = ["build_executor", "build_pool", "build_source", "build_store", "store_exists"]


def build_store(config: Config) -> ProgressStore:
    """The progress store named by ``progress.store``."""
    spec = config.progress.store
    if spec == "memory":
        return MemoryProgressStore()
    if spec.startswith("sqlite:"):
        return SqliteProgressStore(resolve_path(spec.removeprefix("sqlite:")))
    if spec.startswith("file:"):
        return FileProgressStore(resolve_path(spec.removeprefix("file:")))
    if spec.startswith(POSTGRES_SCHEMES):
        from ..progress import PostgresProgressStore

        return PostgresProgressStore(spec, schema=config.progress.schema or "public")
    raise ConfigurationError(
        f"{config_origin(config)}: progress.store {spec!r} is not supported by this version"
    )


def build_claim_store(config: Config) -> ClaimStore:
    """The claim store for scale-out, in the progress store's database."""
    spec = config.progress.store
    if spec.startswith("sqlite:"):
        from ..claims import SqliteClaimStore

        return SqliteClaimStore(resolve_path(spec.removeprefix("sqlite:")))
    if spec.startswith(POSTGRES_SCHEMES):
        from ..claims import PostgresClaimStore

        return PostgresClaimStore(spec, schema=config.progress.schema or "public")
    raise ConfigurationError(
        f"{config_origin(config)}: scale-out needs an SQLite or PostgreSQL store, got {spec!r}"
    )


def store_exists(config: Config) -> bool:
    """Whether the configured store holds anything yet (without creating it)."""
    spec = config.progress.store
    if spec.startswith(("sqlite:", "file:")):
        return resolve_path(spec.partition(":")[2]).exists()
    return spec != "memory"


def build_source(config: Config) -> CheckpointSource:
    """The checkpoint source ``[source]`` describes."""
    source = config.source
    if source.kind == "synthetic":
        return SyntheticSource(seed=source.seed, count=source.count, batch_size=source.batch_size)
    return LocalDirectorySource(
        resolve_path(source.feed),
        poll_interval=source.poll_interval,
        follow=source.follow,
        batch_size=source.batch_size,
        delete_below_watermark=source.delete_below_watermark,
    )


def _instantiate(cls: Any, options: dict[str, Any], where: str, base: type) -> Any:
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigurationError(f"{where}: {cls!r} is not a {base.__name__} subclass")
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as exc:
        raise ConfigurationError(f"{where}: bad options for {cls.__name__}: {exc}") from None
    try:
        return cls(**options)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{where}: {cls.__name__}({options}) failed: {exc}") from None


def build_pool(config: Config, name: str, pipeline: PipelineConfig) -> WorkerPool[Any, Any]:
    """One pipeline's WorkerPool, with its worker and reducer imported and constructed."""
    origin = config_origin(config)
    key = f"{origin}: pipelines.{name}"
    worker_cls = import_object(pipeline.worker, f"{key}.worker")
    worker = _instantiate(worker_cls, pipeline.options, f"{key}.worker", Worker)
    reducer = None
    if pipeline.reducer is not None:
        spec = pipeline.reducer
        reducer_cls = import_object(spec.cls, f"{key}.reducer.class")
        reducer = _instantiate(reducer_cls, spec.options, f"{key}.reducer", Reducer)
        for limit, value in spec.limits().items():  # unset: the reducer's own
            setattr(reducer, limit, value)
    retry = pipeline.retry
    try:
        return WorkerPool(
            worker,
            name=name,
            concurrency=pipeline.concurrency,
            reducer=reducer,
            retry=RetryPolicy(
                initial=retry.initial,
                multiplier=retry.multiplier,
                max_delay=retry.max_delay,
                max_attempts=retry.max_attempts,
                jitter=retry.jitter,
                on_exhausted=retry.on_exhausted,
            ),
            max_inflight=pipeline.max_inflight,
            max_inflight_bytes=pipeline.max_inflight_bytes,
            reschedule_threshold=pipeline.reschedule_threshold,
            progress_interval=pipeline.progress_interval,
        )
    except ConfigurationError as exc:
        raise ConfigurationError(f"{key}: {exc}") from None


def build_executor(
    config: Config, store: ProgressStore | None = None, *, handle_signals: bool = True
) -> IndexerExecutor:
    """An executor with the selected pipelines (``run.pipelines``, or all) registered."""
    if not config.pipelines:
        raise ConfigurationError(f"{config_origin(config)}: no [pipelines.NAME] configured")
    executor = IndexerExecutor(store or build_store(config), handle_signals=handle_signals)
    selected = config.run.pipelines or list(config.pipelines)
    for name in selected:
        executor.register(build_pool(config, name, config.pipelines[name]))
    return executor

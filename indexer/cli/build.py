"""Builds the library's objects a configuration describes: stores, source, pools, executor.

Each object is built straight from its config struct; an object's own check that fails is
reported under the key that set the value (``config.toml: pipelines.swaps.concurrency must be
at least 1, got 0``). Workers and reducers are imported with the config file's directory on
the import path, and their relative path options resolved against it (``paths.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from ..errors import ConfigurationError
from ..executor import IndexerExecutor
from ..pipeline import WorkerPool
from ..progress import ProgressStore
from ..reducer import Reducer
from ..sources import CheckpointSource, LocalDirectorySource, SyntheticSource
from ..worker import Worker
from .config import Config, PipelineConfig, import_object
from .paths import anchor_options, constructor_signature
from .stores import build_store, named, resolve_path

__all__ = ["build_executor", "build_pool", "build_reducer", "build_source"]

T = TypeVar("T")


def build_source(config: Config) -> CheckpointSource:
    """The checkpoint source ``[source]`` describes."""
    source = config.source
    with named(config, "source"):
        if source.kind == "synthetic":
            return SyntheticSource(
                seed=source.seed, count=source.count, batch_size=source.batch_size
            )
        return LocalDirectorySource(
            resolve_path(source.feed),
            poll_interval=source.poll_interval,
            follow=source.follow,
            batch_size=source.batch_size,
            delete_below_watermark=source.delete_below_watermark,
            partial_file_grace=source.partial_file_grace,
        )


def _instantiate(
    cls: Any, options: dict[str, Any], where: str, base: type[T], directory: Path | None
) -> T:
    """``cls(**options)``, its relative path options resolved against the config file's
    ``directory``; errors name ``where``."""
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigurationError(f"{where}: {cls!r} is not a {base.__name__} subclass")
    options = anchor_options(cls, options, directory)
    try:
        constructor_signature(cls).bind(**options)
    except TypeError as exc:
        raise ConfigurationError(f"{where}: bad options for {cls.__name__}: {exc}") from None
    try:
        return cls(**options)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{where}: {cls.__name__}({options}) failed: {exc}") from None


def build_reducer(config: Config, name: str) -> Reducer[Any] | None:
    """Pipeline ``name``'s Reducer, imported and constructed, or None when it has none."""
    spec = config.pipelines[name].reducer
    if spec is None:
        return None
    key = f"{config.origin}: pipelines.{name}.reducer"
    reducer_cls = import_object(spec.cls, f"{key}.class", config.directory)
    reducer = _instantiate(reducer_cls, spec.options, key, Reducer, config.directory)
    for limit, value in spec.limits().items():  # unset: the reducer's own
        setattr(reducer, limit, value)
    with named(config, f"pipelines.{name}.reducer"):
        reducer.validate()
    return reducer


def build_pool(config: Config, name: str, pipeline: PipelineConfig) -> WorkerPool[Any, Any]:
    """One pipeline's WorkerPool, with its worker and reducer imported and constructed."""
    key = f"{config.origin}: pipelines.{name}"
    worker_cls = import_object(pipeline.worker, f"{key}.worker", config.directory)
    worker = _instantiate(worker_cls, pipeline.options, f"{key}.worker", Worker, config.directory)
    reducer = build_reducer(config, name)
    with named(config, f"pipelines.{name}"):
        return WorkerPool(
            worker,
            name=name,
            concurrency=pipeline.concurrency,
            reducer=reducer,
            retry=pipeline.retry,
            max_inflight=pipeline.max_inflight,
            max_inflight_bytes=pipeline.max_inflight_bytes,
            reschedule_threshold=pipeline.reschedule_threshold,
            progress_interval=pipeline.progress_interval,
        )


def build_executor(
    config: Config, store: ProgressStore | None = None, *, handle_signals: bool = True
) -> IndexerExecutor:
    """An executor with the selected pipelines (``run.pipelines``, or all) registered."""
    if not config.pipelines:
        raise ConfigurationError(f"{config.origin}: no [pipelines.NAME] configured")
    executor = IndexerExecutor(
        store or build_store(config),
        handle_signals=handle_signals,
        lease_ttl=config.scale.lease_ttl,
    )
    selected = config.run.pipelines or list(config.pipelines)
    for name in selected:
        executor.register(build_pool(config, name, config.pipelines[name]))
    return executor

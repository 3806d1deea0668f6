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
from ..sources import (
    CheckpointSource,
    LocalDirectorySource,
    SyntheticSource,
    feed_kind,
    local_feed_path,
)
from ..stats import FeedStats
from ..worker import Worker
from .config import Config, PipelineConfig, import_object
from .paths import anchor_options, constructor_signature
from .stores import build_store, named, resolve_path

__all__ = ["build_executor", "build_pool", "build_reducer", "build_source"]

T = TypeVar("T")


def build_source(config: Config, stats: FeedStats | None = None) -> CheckpointSource:
    """The checkpoint source ``[source]`` describes: a user's ``class``, generated checkpoints,
    or the feed ``feed`` names (a directory, an HTTP server, an object store). A remote feed
    counts its retried requests in ``stats`` (the job's ``FeedStats``)."""
    source = config.source
    if source.cls is not None:
        key = f"{config.origin}: source.class"
        cls = import_object(source.cls, key, config.directory)
        return _instantiate(
            cls,
            source.options,
            key,
            CheckpointSource,  # type: ignore[type-abstract]
            config.directory,
        )
    if source.kind == "synthetic":
        with named(config, "source"):
            return SyntheticSource(
                seed=source.seed, count=source.count, batch_size=source.batch_size
            )
    with named(config, "source"):
        kind = feed_kind(source.feed)
        if kind == "directory" and source.reads_files_as_named:
            if source.options:
                raise ConfigurationError(
                    "are for a remote feed or a source.class, not a directory", key="options"
                )
            return LocalDirectorySource(
                resolve_path(local_feed_path(source.feed)),
                poll_interval=source.poll_interval,
                follow=source.follow,
                batch_size=source.batch_size,
                delete_below_watermark=source.delete_below_watermark,
                partial_file_grace=source.partial_file_grace,
            )
        if source.delete_below_watermark:
            raise ConfigurationError(
                "is for a directory of {n}.chk files only", key="delete_below_watermark"
            )
    decode = None
    if source.decode is not None:
        decode = import_object(source.decode, f"{config.origin}: source.decode", config.directory)
        if not callable(decode):
            raise ConfigurationError(
                f"{config.origin}: source.decode: {source.decode!r} is not a function"
            )
    remote: dict[str, Any] = {**source.remote_options(), "decode": decode, "stats": stats}
    from ..sources import HttpSource, ObjectStoreSource  # loaded only for a remote feed

    with named(config, "source"):
        if kind == "http":
            return HttpSource(source.feed, headers=_http_headers(source.options), **remote)
        url = source.feed
        if kind == "directory":  # files named or decoded otherwise: read through obstore
            path = resolve_path(local_feed_path(url)).absolute()
            if not path.is_dir():
                raise ConfigurationError(f"directory {str(path)!r} does not exist", key="feed")
            url = path.as_uri()
        return ObjectStoreSource(url, store_options=source.options, **remote)


def _http_headers(options: dict[str, Any]) -> dict[str, str]:
    """An HTTP feed's ``options``: only ``headers``, a table of strings."""
    unknown = sorted(set(options) - {"headers"})
    if unknown:
        raise ConfigurationError(
            f"unknown option {unknown[0]!r} for an HTTP feed (it takes 'headers')", key="options"
        )
    headers = options.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise ConfigurationError("must be a table of strings", key="options.headers")
    return headers


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
            retention=pipeline.retention,
            retention_interval=pipeline.retention_interval,
        )


def build_executor(
    config: Config, store: ProgressStore | None = None, *, handle_signals: bool = True
) -> IndexerExecutor:
    """An executor with the selected pipelines (``run.pipelines``, or all) registered."""
    if not config.pipelines:
        raise ConfigurationError(f"{config.origin}: no [pipelines.NAME] configured")
    with named(config, "run"):
        executor = IndexerExecutor(
            store or build_store(config),
            handle_signals=handle_signals,
            lease_ttl=config.scale.lease_ttl,
            cohort_distance=config.run.cohort_distance,
            cohort_bytes=config.run.cohort_bytes,
        )
    selected = config.run.pipelines or list(config.pipelines)
    for name in selected:
        executor.register(build_pool(config, name, config.pipelines[name]))
    return executor

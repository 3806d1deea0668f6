"""``indexer run``: an executor, its metrics server and progress bars, from a Config."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from .._loop import loop_factory, run_on
from ..errors import ConfigurationError, IndexerError
from .build import build_executor, build_source
from .config import Config
from .stores import build_claim_store, build_store

if TYPE_CHECKING:
    from ..executor import IndexerExecutor

log = structlog.get_logger("indexer")

__all__ = ["run_indexer"]


def run_indexer(config: Config) -> str:
    """Run the configured pipelines until done or stopped; returns a one-line summary."""
    loop_factory(config.run.event_loop)  # an event loop that cannot be had fails before any work
    if config.scale.processes > 1:
        return _run_processes(config)
    return _run_here(config)


def _run_processes(config: Config) -> str:
    """``--processes N``: this process and N-1 children share the job through the claims."""
    from .processes import ChildFailed, run_processes

    scale = msgspec.structs.replace(
        config.scale, processes=1, claims=config.scale.claims or config.progress.store
    )
    share = msgspec.structs.replace(config, scale=scale)
    executor = build_executor(share)  # imports and checks every pipeline before the children
    started = time.perf_counter()
    try:
        failed = run_processes(
            share,
            config.scale.processes,
            lambda forward: _run_here(share, on_signal=forward, executor=executor),
            run_child,
        )
    except ChildFailed as exc:
        if exc.code == 2:  # what would stop a run of one process as a configuration error
            raise ConfigurationError(str(exc)) from None
        raise
    if failed:
        raise IndexerError(f"{failed} of {config.scale.processes - 1} child processes failed")
    watermarks = run_on(config.run.event_loop, _saved_watermarks(config))
    marks = ", ".join(f"{name}={mark}" for name, mark in watermarks.items())
    return (
        f"{config.scale.processes} processes done in {time.perf_counter() - started:.1f}s; "
        f"watermarks: {marks}"
    )


def run_child(config: Config, started: Callable[[], None]) -> str:
    """A ``--processes`` child's share of the job (module-level: spawned children import it);
    ``started()`` once it is serving its metrics and about to run."""
    return _run_here(config, on_started=started)


def _run_here(
    config: Config,
    on_signal: Callable[[int], None] | None = None,
    executor: IndexerExecutor | None = None,
    on_started: Callable[[], None] | None = None,
) -> str:
    """Run in this process (a chunked share of the job when claims are set); ``on_signal`` is
    told of every stop signal this process gets, ``on_started`` called once everything is
    built and serving and the run begins."""
    executor = executor or build_executor(config)
    executor.timing = config.metrics.enabled
    server = None
    if config.metrics.enabled:
        from ..metrics import serve_metrics, stop_metrics  # prometheus_client: only here

        host, port = config.metrics.host_port
        try:
            server = serve_metrics(
                executor.job,
                host,
                port,
                ready_max_lag_seconds=config.metrics.ready_max_lag_seconds,
                status=lambda: _status(config),
            )
        except OSError as exc:  # the address is the setting to change: exit code 2
            raise ConfigurationError(
                f"cannot serve metrics on {config.metrics.address}: {exc.strerror or exc}"
            ) from None
        log.info("serving metrics", address=f"http://{config.metrics.address}/metrics")
    if on_started is not None:
        on_started()
    loop = config.run.event_loop
    started = time.perf_counter()
    try:
        if config.scale.chunked:
            watermarks = run_on(loop, _run_chunked(executor, config, on_signal))
        else:
            watermarks = run_on(loop, _run(executor, build_source(config), config))
        elapsed = time.perf_counter() - started
    finally:
        if server is not None:
            stop_metrics(server)
    processed = executor.job.processed
    rate = processed / elapsed if elapsed > 0 else 0.0
    marks = ", ".join(f"{name}={mark}" for name, mark in watermarks.items())
    return (
        f"processed {processed} checkpoints in {elapsed:.1f}s ({rate:,.0f}/s); watermarks: {marks}"
    )


def _status(config: Config) -> dict[str, Any]:
    """What ``indexer status --json`` prints for this run's config (``/status``): read on the
    request's thread, on an event loop of its own, with its own store connection."""
    from .status import status_report

    return run_on(config.run.event_loop, status_report(config))


async def _saved_watermarks(config: Config) -> dict[str, int]:
    async with build_store(config) as store:
        saved = await store.watermarks()
    selected = config.run.pipelines or list(config.pipelines)
    return {name: saved.get(name, 0) for name in selected}


async def _run_chunked(
    executor: IndexerExecutor, config: Config, on_signal: Callable[[int], None] | None
) -> dict[str, int]:
    """This process's share of a chunked job (the executor only carries the pools)."""
    from ..chunked import ChunkedRunner

    runner = ChunkedRunner(
        executor.progress_store,
        build_claim_store(config),
        executor.pools,
        lambda: build_source(config),
        chunk_size=config.scale.chunk_size,
        lease_ttl=config.scale.lease_ttl,
        timing=executor.timing,
        on_signal=on_signal,
        job=executor.job,  # what the metrics endpoint and progress bars read
    )
    return await runner.run(config.run.first_checkpoint, config.run.last_checkpoint)


async def _run(executor: IndexerExecutor, source: Any, config: Config) -> dict[str, int]:
    display_task = None
    if config.logging.progress and sys.stderr.isatty():
        from rich.console import Console

        from .display import ProgressDisplay

        display = ProgressDisplay(executor.job, config.run.last_checkpoint, Console(stderr=True))
        display_task = asyncio.create_task(display.run())
    try:
        return await executor.run(source, config.run.first_checkpoint, config.run.last_checkpoint)
    finally:
        if display_task is not None:
            display_task.cancel()
            await asyncio.gather(display_task, return_exceptions=True)
        await source.close()

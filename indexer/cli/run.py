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
from ..snapshot import JobSnapshot, merge, take_snapshot
from .build import build_executor, build_source
from .config import Config
from .stores import build_claim_store, build_store

if TYPE_CHECKING:
    from ..executor import IndexerExecutor
    from ..metrics import Others
    from ..stats import JobView
    from .processes import Publish

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
    from .processes import ChildFailed, ChildSnapshots, run_processes

    scale = msgspec.structs.replace(
        config.scale, processes=1, claims=config.scale.claims or config.progress.store
    )
    share = msgspec.structs.replace(config, scale=scale)
    executor = build_executor(share)  # imports and checks every pipeline before the children
    children: list[ChildSnapshots] = []
    clock = _Clock()
    # Where the job begins, read before any child can commit: the bars show this run's range
    # (only bars need it: a read and a connection fewer before the children start).
    starts = run_on(config.run.event_loop, _saved_watermarks(config)) if _draws(config) else None

    def run_share(forward: Callable[[int], None], snapshots: ChildSnapshots) -> None:
        children.append(snapshots)
        _run_here(
            share,
            on_signal=forward,
            executor=executor,
            others=snapshots,
            clock=clock,
            starts=starts,
        )

    try:
        failed = run_processes(share, config.scale.processes, run_share, run_child)
    except ChildFailed as exc:
        if exc.code == 2:  # what would stop a run of one process as a configuration error
            raise ConfigurationError(str(exc)) from None
        raise
    if failed:
        raise IndexerError(f"{failed} of {config.scale.processes - 1} child processes failed")
    job = merge([take_snapshot(executor.job), *(children[0]() if children else ())])
    watermarks = run_on(config.run.event_loop, _saved_watermarks(config))
    return summary(job, clock, watermarks, f" by {config.scale.processes} processes")


def run_child(config: Config, started: Callable[[], None], publish: Publish) -> str:
    """A ``--processes`` child's share of the job (module-level: spawned children import it);
    ``started()`` once it is about to run, ``publish(job)`` sends its numbers to the parent
    (which sums up the job: the child prints no summary)."""
    _run_here(config, on_started=started, publish=publish)
    return ""


class _Clock:
    """When a run started, on the wall clock (to compare with commit times) and for timing."""

    def __init__(self) -> None:
        self.wall = time.time()
        self.started = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def summary(job: JobSnapshot, clock: _Clock, watermarks: dict[str, int], by: str = "") -> str:
    """The closing line: checkpoints each pipeline processed (the most of them, and each one's
    when they differ), over the time spent working (up to the last commit, not the idle
    tailing after it), and the watermarks."""
    counts = {p.name: p.processed for p in job.pipelines}
    processed = max(counts.values(), default=0)
    each = ""
    if len(set(counts.values())) > 1:
        each = " (" + ", ".join(f"{name}={n}" for name, n in counts.items()) + ")"
    elapsed = clock.elapsed
    commits = [p.committed_at for p in job.pipelines if p.committed_at is not None]
    working = min(elapsed, max(commits) - clock.wall) if commits else elapsed
    rate = processed / working if working > 0 else 0.0
    marks = ", ".join(f"{name}={mark}" for name, mark in watermarks.items())
    return (
        f"processed {processed} checkpoints{each} in {elapsed:.1f}s ({rate:,.0f}/s){by}; "
        f"watermarks: {marks}"
    )


def _run_here(
    config: Config,
    on_signal: Callable[[int], None] | None = None,
    executor: IndexerExecutor | None = None,
    on_started: Callable[[], None] | None = None,
    publish: Publish | None = None,
    others: Others | None = None,
    clock: _Clock | None = None,
    starts: dict[str, int] | None = None,
) -> str:
    """Run in this process (a chunked share of the job when claims are set); ``on_signal`` is
    told of every stop signal this process gets, ``on_started`` called once everything is
    built and serving and the run begins. A child of ``--processes`` sends its numbers to
    the parent with ``publish`` instead of serving metrics; the parent shows its own and
    the ``others``' together."""
    executor = executor or build_executor(config)
    executor.timing = config.metrics.enabled
    server = None
    if config.metrics.enabled and publish is None:
        from ..metrics import serve_metrics, stop_metrics  # prometheus_client: only here

        host, port = config.metrics.host_port
        try:
            server = serve_metrics(
                executor.job,
                host,
                port,
                ready_max_lag_seconds=config.metrics.ready_max_lag_seconds,
                status=lambda: _status(config),
                others=others,
            )
        except OSError as exc:  # the address is the setting to change: exit code 2
            raise ConfigurationError(
                f"cannot serve metrics on {config.metrics.address}: {exc.strerror or exc}"
            ) from None
        log.info("serving metrics", address=f"http://{config.metrics.address}/metrics")
    if on_started is not None:
        on_started()
    clock = clock or _Clock()
    try:
        watermarks = run_on(
            config.run.event_loop, _run(executor, config, on_signal, publish, others, starts)
        )
    finally:
        if server is not None:
            stop_metrics(server)
    return summary(take_snapshot(executor.job), clock, watermarks)


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
        lambda: build_source(config, executor.job.feed),
        chunk_size=config.scale.chunk_size,
        lease_ttl=config.scale.lease_ttl,
        timing=executor.timing,
        on_signal=on_signal,
        job=executor.job,  # what the metrics endpoint and progress bars read
    )
    return await runner.run(config.run.first_checkpoint, config.run.last_checkpoint)


async def _run_whole(executor: IndexerExecutor, config: Config) -> dict[str, int]:
    source = build_source(config, executor.job.feed)
    try:
        return await executor.run(source, config.run.first_checkpoint, config.run.last_checkpoint)
    finally:
        await source.close()


async def _run(
    executor: IndexerExecutor,
    config: Config,
    on_signal: Callable[[int], None] | None,
    publish: Publish | None,
    others: Others | None,
    starts: dict[str, int] | None = None,
) -> dict[str, int]:
    """The run, beside the tasks that show it: progress bars on a terminal (from ``starts``,
    when the caller knows where each pipeline began), or (a child of ``--processes``) its
    numbers sent to the parent every second and once at the end."""
    beside: asyncio.Task[None] | None = None
    if publish is not None:
        beside = asyncio.create_task(_publish_every(publish, executor.job), name="publish")
    elif _draws(config):
        from rich.console import Console

        from .display import ProgressDisplay

        display = ProgressDisplay(
            executor.job, config.run.last_checkpoint, Console(stderr=True), others, starts
        )
        beside = asyncio.create_task(display.run(), name="progress")
    try:
        if config.scale.chunked:
            return await _run_chunked(executor, config, on_signal)
        return await _run_whole(executor, config)
    finally:
        if beside is not None:
            beside.cancel()
            await asyncio.gather(beside, return_exceptions=True)
        if publish is not None:
            publish(executor.job)


def _draws(config: Config) -> bool:
    """Whether this process draws progress bars (on a terminal, unless turned off)."""
    return config.logging.progress and sys.stderr.isatty()


async def _publish_every(publish: Publish, job: JobView) -> None:
    from .processes import PUBLISH_INTERVAL

    while True:
        publish(job)
        await asyncio.sleep(PUBLISH_INTERVAL)

"""Prometheus metrics without a cost on the hot path, and the health of a run.

The engine keeps plain counters and cheap histograms (``indexer.stats``); ``IndexerCollector``
turns a ``JobView`` of them into Prometheus metric families only when scraped.
``serve_metrics`` serves them at ``/metrics`` beside ``/healthz`` (the event loop turns),
``/readyz`` (no pipeline halted or too far behind) and ``/status`` (what the caller reports).
"""

from __future__ import annotations

import contextlib
import json
import platform
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from socketserver import ThreadingMixIn
from typing import Any, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from . import __version__
from .snapshot import JobSnapshot, PipelineSnapshot, merge, take_snapshot
from .stats import CHUNK_STATES, FETCH_RETRY_REASONS, JobView

__all__ = ["IndexerCollector", "JobSnapshots", "readiness", "serve_metrics", "stop_metrics"]

T = TypeVar("T")

#: Seconds a scrape waits for the job's event loop to build a consistent exposition.
CONSISTENT_WAIT = 2.0
#: Seconds ``/healthz`` waits for the job's event loop to run a callback.
HEALTH_WAIT = 2.0

#: One sample per pipeline: (family, name, help, how to read it off the pipeline's snapshot).
_PER_PIPELINE: tuple[tuple[Any, str, str, Callable[[PipelineSnapshot], float]], ...] = (
    (
        CounterMetricFamily,
        "indexer_checkpoints_processed",
        "Checkpoints whose process_checkpoint call succeeded.",
        lambda p: p.processed,
    ),
    (
        CounterMetricFamily,
        "indexer_dead_letters",
        "Checkpoints skipped after their attempts ran out.",
        lambda p: p.dead_letters,
    ),
    (
        GaugeMetricFamily,
        "indexer_watermark",
        "The next checkpoint the pipeline has not committed (in a chunked job: the end of its "
        "contiguous completed chunks).",
        lambda p: p.watermark,
    ),
    (
        GaugeMetricFamily,
        "indexer_pipeline_halted",
        "1 when the pipeline halted, else 0.",
        lambda p: 0 if p.halted is None else 1,
    ),
)

#: One sample per pipeline and process of a ``--processes`` job, where they differ.
_PER_PROCESS: tuple[tuple[Any, str, str, Callable[[PipelineSnapshot], float]], ...] = (
    (
        CounterMetricFamily,
        "indexer_process_checkpoints_processed",
        "Checkpoints one process of the job processed.",
        lambda p: p.processed,
    ),
    (
        GaugeMetricFamily,
        "indexer_process_position",
        "The next checkpoint the chunk one process works on has not committed.",
        lambda p: p.position,
    ),
    (
        GaugeMetricFamily,
        "indexer_process_inflight_checkpoints",
        "Checkpoints one process read but has not committed.",
        lambda p: p.inflight,
    ),
)


def _retry_reasons(pipeline: PipelineSnapshot) -> tuple[tuple[str, int], ...]:
    """``indexer_retries_total``'s reasons and counts (every reason, zeros included)."""
    return (
        ("checkpoint", pipeline.retries),
        ("commit", pipeline.commit_retries),
        ("watermark", pipeline.store_retries),
    )


#: Histograms per pipeline: (name, help, the histogram's name in a PipelineSnapshot).
_HISTOGRAMS = (
    (
        "indexer_checkpoint_processing_seconds",
        "Time spent in one successful process_checkpoint call.",
        "processing_seconds",
    ),
    (
        "indexer_queue_wait_seconds",
        "Time a checkpoint waited in the window for a worker task (one in 16 sampled).",
        "queue_wait_seconds",
    ),
    ("indexer_commit_seconds", "Time one successful reducer commit took.", "commit_seconds"),
    ("indexer_reducer_batch_messages", "Messages in each committed batch.", "batch_messages"),
)


def _on_loop(job: JobView, build: Callable[[], T], timeout: float) -> T:
    """``build()`` on the job's event loop between two of its callbacks (one moment of the
    run, as the loop thread changes what it reads); here when the loop is not running or does
    not turn within ``timeout`` seconds (a worker holding it)."""
    loop = job.loop
    if loop is None or loop.is_closed() or not loop.is_running():
        return build()
    built: Future[T] = Future()

    def run() -> None:
        try:
            built.set_result(build())
        except BaseException as exc:
            built.set_exception(exc)

    try:
        loop.call_soon_threadsafe(run)
        return built.result(timeout=timeout)
    except (RuntimeError, TimeoutError):  # the loop closed or is busy: not one moment
        return build()


def _loop_turns(job: JobView, timeout: float) -> str | None:
    """None when the job's event loop runs a callback within ``timeout`` seconds, else why."""
    loop = job.loop
    if loop is None or loop.is_closed() or not loop.is_running():
        return "the event loop is not running"
    turned = threading.Event()
    try:
        loop.call_soon_threadsafe(turned.set)
    except RuntimeError:  # closed meanwhile
        return "the event loop is not running"
    if not turned.wait(timeout):
        return f"the event loop did not turn within {timeout:g}s"
    return None


#: What a process that speaks for others (the parent of ``--processes N``) asks for their
#: latest snapshots.
Others = Callable[[], list[JobSnapshot]]


class JobSnapshots:
    """The job's snapshots at one moment: this process's, taken on its event loop, and the
    latest of the processes it speaks for (``others``)."""

    def __init__(self, job: JobView, others: Others | None = None) -> None:
        self.job = job
        self.others = others

    def parts(self, on_loop: bool = False) -> list[JobSnapshot]:
        """Every process's snapshot, this one's first; ``on_loop``: called on the job's
        event loop itself (the progress bars), which takes it at once."""
        if on_loop:
            own = take_snapshot(self.job)
        else:
            own = _on_loop(self.job, lambda: take_snapshot(self.job), CONSISTENT_WAIT)
        return [own, *(self.others() if self.others is not None else ())]

    def merged(self, on_loop: bool = False) -> JobSnapshot:
        """The whole job as one snapshot (what the progress bars and ``/readyz`` read)."""
        return merge(self.parts(on_loop))


def readiness(
    job: JobSnapshot, max_lag_seconds: float | None, now: float | None = None
) -> list[dict[str, Any]]:
    """Why the job is not ready, one entry per pipeline and reason (empty: ready): a pipeline
    halted, the feed cannot be read, or (with ``max_lag_seconds``) a pipeline's newest
    committed checkpoint is older than that. A pipeline that has committed nothing in this
    job yet has no known age."""
    now = time.time() if now is None else now
    reasons: list[dict[str, Any]] = []
    if job.feed_problem is not None:
        reasons.append({"reason": "feed unreadable", "error": job.feed_problem})
    for pipeline in job.pipelines:
        name = pipeline.name
        if pipeline.halted is not None:
            reasons.append({"pipeline": name, "reason": "halted", "error": pipeline.halted})
        stamp = pipeline.watermark_timestamp_ms
        if max_lag_seconds is not None and stamp is not None:
            lag = now - stamp / 1000
            if lag > max_lag_seconds:
                reasons.append(
                    {
                        "pipeline": pipeline.name,
                        "reason": "lagging",
                        "lag_seconds": round(lag, 3),
                        "max_lag_seconds": max_lag_seconds,
                    }
                )
    return reasons


class IndexerCollector(Collector):
    """Exposes a job's stats as ``indexer_*`` metrics, computed at scrape time: this
    process's, and those of the processes it speaks for (``others``) added up, with the
    series that differ between processes labelled ``process``."""

    def __init__(self, job: JobView, others: Others | None = None) -> None:
        self.job = job
        self.snapshots = JobSnapshots(job, others)

    def collect(self) -> Iterator[Metric]:
        """Every family, from snapshots taken on the job's event loop so that one scrape is
        one moment (``_on_loop``, waiting ``CONSISTENT_WAIT`` seconds at most)."""
        parts = self.snapshots.parts()
        yield from _families(merge(parts), parts if len(parts) > 1 else [])


def _families(job: JobSnapshot, parts: list[JobSnapshot]) -> Iterator[Metric]:
    """The metric families of ``job``, and per-process ones for each of ``parts``."""
    pipelines = job.pipelines
    now = time.time()
    info = GaugeMetricFamily(
        "indexer_build_info",
        "The indexer's version and the Python it runs on (always 1).",
        labels=["version", "python"],
    )
    info.add_metric([__version__, platform.python_version()], 1)
    yield info
    for family_type, name, doc, read in _PER_PIPELINE:
        family = family_type(name, doc, labels=["pipeline"])
        for pipeline in pipelines:
            family.add_metric([pipeline.name], read(pipeline))
        yield family
    inflight = GaugeMetricFamily(
        "indexer_inflight_checkpoints",
        "Checkpoints read but not yet committed (the in-flight windows).",
        labels=["pipeline"],
    )
    stamped = GaugeMetricFamily(
        "indexer_watermark_timestamp_seconds",
        "The timestamp of the newest committed checkpoint (absent until one is committed).",
        labels=["pipeline"],
    )
    lag_seconds = GaugeMetricFamily(
        "indexer_lag_seconds",
        "Seconds from the newest committed checkpoint's timestamp to now.",
        labels=["pipeline"],
    )
    committed = GaugeMetricFamily(
        "indexer_last_commit_timestamp_seconds",
        "When the pipeline last raised its saved watermark (absent until it does).",
        labels=["pipeline"],
    )
    for pipeline in pipelines:
        inflight.add_metric([pipeline.name], pipeline.inflight)
        if pipeline.watermark_timestamp_ms is not None:
            stamp = pipeline.watermark_timestamp_ms / 1000
            stamped.add_metric([pipeline.name], stamp)
            lag_seconds.add_metric([pipeline.name], max(0.0, now - stamp))
        if pipeline.committed_at is not None:
            committed.add_metric([pipeline.name], pipeline.committed_at)
    pruned = GaugeMetricFamily(
        "indexer_pruned_below",
        "The pruned-below mark of a pipeline with a retention: its sink holds no rows of "
        "checkpoints below it (absent until known).",
        labels=["pipeline"],
    )
    for pipeline in pipelines:
        if pipeline.pruned_below is not None:
            pruned.add_metric([pipeline.name], pipeline.pruned_below)
    yield from (inflight, stamped, lag_seconds, committed, pruned)
    retries = CounterMetricFamily(
        "indexer_retries",
        "Failures retried, by reason: checkpoint (a process_checkpoint call), commit (a "
        "reducer commit), watermark (a progress-store write: watermark save, dead letter).",
        labels=["pipeline", "reason"],
    )
    batches = CounterMetricFamily(
        "indexer_reducer_batches", "Reducer commits, by outcome.", labels=["pipeline", "outcome"]
    )
    for pipeline in pipelines:
        for reason, count in _retry_reasons(pipeline):
            retries.add_metric([pipeline.name, reason], count)
        batches.add_metric([pipeline.name, "committed"], pipeline.batches_committed)
        batches.add_metric([pipeline.name, "failed"], pipeline.batches_failed)
    yield from (retries, batches)
    for name, doc, attribute in _HISTOGRAMS:
        family = HistogramMetricFamily(name, doc, labels=["pipeline"])
        for pipeline in pipelines:
            histogram = pipeline.histograms.get(attribute)
            if histogram is not None:
                family.add_metric([pipeline.name], histogram.cumulative(), histogram.sum)
        yield family
    yield from _chunk_families(pipelines)
    latest = job.feed_newest
    if latest is not None:
        yield GaugeMetricFamily(
            "indexer_feed_latest_checkpoint", "The newest checkpoint the feed holds.", value=latest
        )
        lag = GaugeMetricFamily(
            "indexer_lag_checkpoints",
            "Checkpoints in the feed above the pipeline's watermark.",
            labels=["pipeline"],
        )
        for pipeline in pipelines:
            lag.add_metric([pipeline.name], max(0, latest + 1 - pipeline.watermark))
        yield lag
    yield CounterMetricFamily(
        "indexer_feed_bytes", "Encoded checkpoint bytes read from the feed.", job.feed_bytes
    )
    fetch_retries = CounterMetricFamily(
        "indexer_feed_fetch_retries",
        "A remote feed's requests retried, by reason: connect, timeout, http_408, http_429, "
        "http_5xx, short_body (a body cut short), decode (a body that does not decode).",
        labels=["reason"],
    )
    for reason in FETCH_RETRY_REASONS:
        fetch_retries.add_metric([reason], job.feed_fetch_retries.get(reason, 0))
    yield fetch_retries
    yield from _cohort_families(job)
    yield from _process_families(parts)


def _cohort_families(job: JobSnapshot) -> Iterator[Metric]:
    """What each cohort (pipelines sharing one read of the feed) read, and its members:
    bytes read per checkpoint stays about one checkpoint's size while pipelines run together."""
    yield CounterMetricFamily(
        "indexer_feed_checkpoints_read",
        "Checkpoints read from the feed by every cohort together (more than the feed holds "
        "when cohorts far apart read the same ones).",
        job.feed_checkpoints,
    )
    yield GaugeMetricFamily(
        "indexer_cohorts",
        "Cohorts reading the feed now: one per group of pipelines close together.",
        value=len(job.cohorts),
    )
    read = CounterMetricFamily(
        "indexer_cohort_checkpoints_read",
        "Checkpoints this cohort read from the feed.",
        labels=["cohort"],
    )
    read_bytes = CounterMetricFamily(
        "indexer_cohort_bytes_read",
        "Encoded checkpoint bytes this cohort read from the feed.",
        labels=["cohort"],
    )
    position = GaugeMetricFamily(
        "indexer_cohort_position", "The next checkpoint this cohort reads.", labels=["cohort"]
    )
    members = GaugeMetricFamily(
        "indexer_cohort_member",
        "1 for each pipeline in the cohort (pipelines move between cohorts as they drift apart "
        "or catch up).",
        labels=["cohort", "pipeline"],
    )
    for cohort in job.cohorts:
        read.add_metric([cohort.name], cohort.checkpoints_read)
        read_bytes.add_metric([cohort.name], cohort.bytes_read)
        position.add_metric([cohort.name], cohort.position)
        for pipeline in cohort.pipelines:
            members.add_metric([cohort.name, pipeline], 1)
    yield from (read, read_bytes, position, members)


def _chunk_families(pipelines: list[PipelineSnapshot]) -> Iterator[Metric]:
    """A chunked job's: its chunks by state, and failed lease renewals."""
    chunked = [p for p in pipelines if p.chunks_at is not None]
    if not chunked:
        return
    chunks = GaugeMetricFamily(
        "indexer_chunks",
        "A chunked job's chunks by state (done, leased, pending), as the claim store holds them.",
        labels=["pipeline", "state"],
    )
    renewals = CounterMetricFamily(
        "indexer_lease_renewal_failures",
        "Renewals of a chunk's lease that failed (retried, or the lease given up).",
        labels=["pipeline"],
    )
    for pipeline in chunked:
        for state in CHUNK_STATES:
            chunks.add_metric([pipeline.name, state], pipeline.chunks.get(state, 0))
        renewals.add_metric([pipeline.name], pipeline.lease_renewal_failures)
    yield from (chunks, renewals)


def _process_families(parts: list[JobSnapshot]) -> Iterator[Metric]:
    """The series that differ between the processes of a ``--processes`` job."""
    if not parts:
        return
    for family_type, name, doc, read in _PER_PROCESS:
        family = family_type(name, doc, labels=["pipeline", "process"])
        for part in parts:
            for pipeline in part.pipelines:
                family.add_metric([pipeline.name, str(part.process)], read(pipeline))
        yield family
    age = GaugeMetricFamily(
        "indexer_process_snapshot_age_seconds",
        "Seconds since the numbers of one process of the job were taken.",
        labels=["process"],
    )
    now = time.time()
    for part in parts:
        age.add_metric([str(part.process)], max(0.0, now - part.taken_at))
    yield age


class _Server(ThreadingMixIn, WSGIServer):
    """A request per thread: a slow ``/status`` never holds up a scrape or a probe."""

    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Log no request."""


StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def _health_app(
    snapshots: JobSnapshots,
    registry: CollectorRegistry,
    ready_max_lag_seconds: float | None,
    status: Callable[[], Any] | None,
) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    metrics = make_wsgi_app(registry)

    def reply(
        start: StartResponse, code: str, body: Any, kind: str = "application/json"
    ) -> list[bytes]:
        data = body if isinstance(body, bytes) else (json.dumps(body) + "\n").encode()
        start(code, [("Content-Type", kind), ("Content-Length", str(len(data)))])
        return [data]

    def app(environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start)
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return reply(start, "405 Method Not Allowed", {"error": "use GET"})
        if path == "/healthz":
            why = _loop_turns(snapshots.job, HEALTH_WAIT)
            if why is None:
                return reply(start, "200 OK", b"ok\n", "text/plain; charset=utf-8")
            return reply(start, "503 Service Unavailable", f"{why}\n".encode(), "text/plain")
        if path == "/readyz":
            reasons = readiness(snapshots.merged(), ready_max_lag_seconds)
            if reasons:
                return reply(start, "503 Service Unavailable", {"ready": False, "reasons": reasons})
            return reply(start, "200 OK", {"ready": True})
        if path == "/status" and status is not None:
            try:
                report = status()
            except Exception as exc:  # the store cannot be read now: say so, keep serving
                return reply(start, "503 Service Unavailable", {"error": str(exc)})
            return reply(start, "200 OK", report)
        return reply(start, "404 Not Found", {"error": f"no such path: {path}"})

    return app


def serve_metrics(
    job: JobView,
    host: str,
    port: int,
    *,
    ready_max_lag_seconds: float | None = None,
    status: Callable[[], Any] | None = None,
    others: Others | None = None,
) -> Any:
    """Serve, on ``host:port`` in a thread, the job's metrics (and the process's) at
    ``/metrics``, ``/healthz``, ``/readyz`` (``readiness``) and, given ``status`` (called for
    each request, on the request's thread), its JSON at ``/status``; returns the server.
    With ``others``, the job is this process's and theirs (``IndexerCollector``)."""
    from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR

    registry = CollectorRegistry()
    for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(standard)
    collector = IndexerCollector(job, others)
    registry.register(collector)
    app = _health_app(collector.snapshots, registry, ready_max_lag_seconds, status)

    class Server(_Server):
        address_family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0][0]

    server = make_server(host, port, app, Server, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def stop_metrics(server: Any) -> None:
    """Stop and close a server ``serve_metrics`` started, at once: ``shutdown()`` waits for
    its thread's next poll (every half a second), so connections wake that thread until it
    has seen the request to stop."""
    stopping = threading.Thread(target=server.shutdown, name="metrics-shutdown", daemon=True)
    stopping.start()
    host, port = server.server_address[:2]
    while stopping.is_alive():
        with contextlib.suppress(OSError):  # if none gets through, the poll ends it
            socket.create_connection((host, port), timeout=0.1).close()
        stopping.join(0.01)
    server.server_close()

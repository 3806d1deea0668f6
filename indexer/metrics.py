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
from .stats import Histogram, JobView, PipelineStats, PipelineView

__all__ = ["IndexerCollector", "readiness", "serve_metrics", "stop_metrics"]

T = TypeVar("T")

#: Seconds a scrape waits for the job's event loop to build a consistent exposition.
CONSISTENT_WAIT = 2.0
#: Seconds ``/healthz`` waits for the job's event loop to run a callback.
HEALTH_WAIT = 2.0

#: One sample per pipeline: (family, name, help, how to read it off the pipeline's view).
_PER_PIPELINE: tuple[tuple[Any, str, str, Callable[[PipelineView], float]], ...] = (
    (
        CounterMetricFamily,
        "indexer_checkpoints_processed",
        "Checkpoints whose process_checkpoint call succeeded.",
        lambda view: view.stats.processed,
    ),
    (
        CounterMetricFamily,
        "indexer_dead_letters",
        "Checkpoints skipped after their attempts ran out.",
        lambda view: view.stats.dead_letters,
    ),
    (
        GaugeMetricFamily,
        "indexer_watermark",
        "The next checkpoint the pipeline has not committed.",
        lambda view: view.watermark,
    ),
    (
        GaugeMetricFamily,
        "indexer_inflight_checkpoints",
        "Checkpoints read but not yet committed (the in-flight window).",
        lambda view: view.inflight,
    ),
)


def _retry_reasons(stats: PipelineStats) -> tuple[tuple[str, int], ...]:
    """``indexer_retries_total``'s reasons and counts (every reason, zeros included)."""
    return (
        ("checkpoint", stats.retries),
        ("commit", stats.commit_retries),
        ("watermark", stats.store_retries),
    )


#: Histograms per pipeline: (name, help, the PipelineStats attribute).
_HISTOGRAMS = (
    (
        "indexer_checkpoint_processing_seconds",
        "Time spent in one successful process_checkpoint call.",
        "processing_seconds",
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


def readiness(
    job: JobView, max_lag_seconds: float | None, now: float | None = None
) -> list[dict[str, Any]]:
    """Why the job is not ready, one entry per pipeline and reason (empty: ready): a pipeline
    halted, or (with ``max_lag_seconds``) its newest committed checkpoint is older than that.
    A pipeline that has committed nothing in this process yet has no known age."""
    now = time.time() if now is None else now
    reasons: list[dict[str, Any]] = []
    for view in list(job.pipelines.values()):
        error = view.error
        if error is not None:
            reasons.append({"pipeline": view.name, "reason": "halted", "error": str(error)})
        stamp = view.stats.watermark_timestamp_ms
        if max_lag_seconds is not None and stamp is not None:
            lag = now - stamp / 1000
            if lag > max_lag_seconds:
                reasons.append(
                    {
                        "pipeline": view.name,
                        "reason": "lagging",
                        "lag_seconds": round(lag, 3),
                        "max_lag_seconds": max_lag_seconds,
                    }
                )
    return reasons


class IndexerCollector(Collector):
    """Exposes a job's stats as ``indexer_*`` metrics, computed at scrape time."""

    def __init__(self, job: JobView) -> None:
        self.job = job

    def collect(self) -> Iterator[Metric]:
        """Every family, built on the job's event loop so that one scrape is one moment
        (``_on_loop``, waiting ``CONSISTENT_WAIT`` seconds at most)."""
        yield from _on_loop(self.job, lambda: list(self._families()), CONSISTENT_WAIT)

    def _families(self) -> Iterator[Metric]:
        feed = self.job.feed
        views = list(self.job.pipelines.values())
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
            for view in views:
                family.add_metric([view.name], read(view))
            yield family
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
        halted = GaugeMetricFamily(
            "indexer_pipeline_halted", "1 when the pipeline halted, else 0.", labels=["pipeline"]
        )
        for view in views:
            stats = view.stats
            if stats.watermark_timestamp_ms is not None:
                stamp = stats.watermark_timestamp_ms / 1000
                stamped.add_metric([view.name], stamp)
                lag_seconds.add_metric([view.name], max(0.0, now - stamp))
            if stats.committed_at is not None:
                committed.add_metric([view.name], stats.committed_at)
            halted.add_metric([view.name], 0 if view.error is None else 1)
        yield from (stamped, lag_seconds, committed, halted)
        retries = CounterMetricFamily(
            "indexer_retries",
            "Failures retried, by reason: checkpoint (a process_checkpoint call), commit (a "
            "reducer commit), watermark (a progress-store write: watermark save, dead letter).",
            labels=["pipeline", "reason"],
        )
        for view in views:
            stats = view.stats
            for reason, count in _retry_reasons(stats):
                retries.add_metric([view.name, reason], count)
        yield retries
        batches = CounterMetricFamily(
            "indexer_reducer_batches",
            "Reducer commits, by outcome.",
            labels=["pipeline", "outcome"],
        )
        for view in views:
            batches.add_metric([view.name, "committed"], view.stats.batches_committed)
            batches.add_metric([view.name, "failed"], view.stats.batches_failed)
        yield batches
        for name, doc, attribute in _HISTOGRAMS:
            family = HistogramMetricFamily(name, doc, labels=["pipeline"])
            for view in views:
                histogram: Histogram = getattr(view.stats, attribute)
                family.add_metric([view.name], histogram.cumulative(), sum_value=histogram.sum)
            yield family
        # The feed's newest known checkpoint: the poller's (which sees past a gap the reader
        # waits at) or the reader's, whichever is newer.
        known = [n for n in (feed.latest, feed.last_read) if n is not None]
        if known:
            latest = max(known)
            yield GaugeMetricFamily(
                "indexer_feed_latest_checkpoint",
                "The newest checkpoint the feed holds.",
                value=latest,
            )
            lag = GaugeMetricFamily(
                "indexer_lag_checkpoints",
                "Checkpoints in the feed above the pipeline's watermark.",
                labels=["pipeline"],
            )
            for view in views:
                lag.add_metric([view.name], max(0, latest + 1 - view.watermark))
            yield lag
        yield CounterMetricFamily(
            "indexer_feed_bytes", "Encoded checkpoint bytes read from the feed.", feed.bytes_read
        )


class _Server(ThreadingMixIn, WSGIServer):
    """A request per thread: a slow ``/status`` never holds up a scrape or a probe."""

    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Log no request."""


StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def _health_app(
    job: JobView,
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
            why = _loop_turns(job, HEALTH_WAIT)
            if why is None:
                return reply(start, "200 OK", b"ok\n", "text/plain; charset=utf-8")
            return reply(start, "503 Service Unavailable", f"{why}\n".encode(), "text/plain")
        if path == "/readyz":
            reasons = _on_loop(job, lambda: readiness(job, ready_max_lag_seconds), CONSISTENT_WAIT)
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
) -> Any:
    """Serve, on ``host:port`` in a thread, the job's metrics (and the process's) at
    ``/metrics``, ``/healthz``, ``/readyz`` (``readiness``) and, given ``status`` (called for
    each request, on the request's thread), its JSON at ``/status``; returns the server."""
    from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR

    registry = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    registry.register(IndexerCollector(job))
    app = _health_app(job, registry, ready_max_lag_seconds, status)

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

"""Prometheus metrics without a cost on the hot path.

The engine keeps plain counters and cheap histograms (``indexer.stats``); ``IndexerCollector``
turns a ``JobView`` of them into Prometheus metric families only when scraped.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .stats import Histogram, JobView, PipelineView

__all__ = ["IndexerCollector", "serve_metrics", "stop_metrics"]

#: Seconds a scrape waits for the job's event loop to build a consistent exposition.
CONSISTENT_WAIT = 2.0

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
        "indexer_retries",
        "Failed process_checkpoint calls retried.",
        lambda view: view.stats.retries,
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


class IndexerCollector(Collector):
    """Exposes a job's stats as ``indexer_*`` metrics, computed at scrape time."""

    def __init__(self, job: JobView) -> None:
        self.job = job

    def collect(self) -> Iterator[Metric]:
        """Every family, built on the job's event loop between two of its callbacks, so that
        one scrape is one moment: the loop thread changes the counters while this thread
        serves the scrape. Built here instead when the loop is not running or does not turn
        within ``CONSISTENT_WAIT`` seconds (a worker holding it)."""
        loop = self.job.loop
        if loop is None or loop.is_closed() or not loop.is_running():
            yield from self._families()
            return
        built: Future[list[Metric]] = Future()

        def build() -> None:
            try:
                built.set_result(list(self._families()))
            except BaseException as exc:
                built.set_exception(exc)

        try:
            loop.call_soon_threadsafe(build)
            families = built.result(timeout=CONSISTENT_WAIT)
        except (RuntimeError, TimeoutError):  # the loop closed or is busy: not one moment
            families = list(self._families())
        yield from families

    def _families(self) -> Iterator[Metric]:
        feed = self.job.feed
        views = list(self.job.pipelines.values())
        for family_type, name, doc, read in _PER_PIPELINE:
            family = family_type(name, doc, labels=["pipeline"])
            for view in views:
                family.add_metric([view.name], read(view))
            yield family
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
        latest = feed.latest if feed.latest is not None else feed.last_read
        if latest is not None:
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


def serve_metrics(job: JobView, host: str, port: int) -> Any:
    """Serve the job's metrics (and the process's) on ``host:port``; returns the server."""
    from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR

    registry = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    registry.register(IndexerCollector(job))
    server, _thread = start_http_server(port, addr=host, registry=registry)
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

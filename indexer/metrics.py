"""Prometheus metrics without a cost on the hot path.

The engine keeps plain counters and cheap histograms (``indexer.stats``); ``IndexerCollector``
turns a ``JobView`` of them into Prometheus metric families only when scraped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
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

from .stats import Histogram, JobView

__all__ = ["IndexerCollector", "serve_metrics"]

#: Seconds a scrape waits for the job's event loop to build a consistent exposition.
CONSISTENT_WAIT = 2.0


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
        names = [view.name for view in views]

        def per_pipeline(family: Any, values: Iterable[float]) -> Any:
            for name, value in zip(names, values, strict=True):
                family.add_metric([name], value)
            return family

        stats = [view.stats for view in views]
        yield per_pipeline(
            CounterMetricFamily(
                "indexer_checkpoints_processed",
                "Checkpoints whose process_checkpoint call succeeded.",
                labels=["pipeline"],
            ),
            (s.processed for s in stats),
        )
        yield per_pipeline(
            CounterMetricFamily(
                "indexer_retries", "Failed process_checkpoint calls retried.", labels=["pipeline"]
            ),
            (s.retries for s in stats),
        )
        yield per_pipeline(
            CounterMetricFamily(
                "indexer_dead_letters",
                "Checkpoints skipped after their attempts ran out.",
                labels=["pipeline"],
            ),
            (s.dead_letters for s in stats),
        )
        batches = CounterMetricFamily(
            "indexer_reducer_batches",
            "Reducer commits, by outcome.",
            labels=["pipeline", "outcome"],
        )
        for name, s in zip(names, stats, strict=True):
            batches.add_metric([name, "committed"], s.batches_committed)
            batches.add_metric([name, "failed"], s.batches_failed)
        yield batches
        for metric, doc, attribute in (
            (
                "indexer_checkpoint_processing_seconds",
                "Time spent in one successful process_checkpoint call.",
                "processing_seconds",
            ),
            (
                "indexer_commit_seconds",
                "Time one successful reducer commit took.",
                "commit_seconds",
            ),
            (
                "indexer_reducer_batch_messages",
                "Messages in each committed batch.",
                "batch_messages",
            ),
        ):
            family = HistogramMetricFamily(metric, doc, labels=["pipeline"])
            for name, s in zip(names, stats, strict=True):
                histogram: Histogram = getattr(s, attribute)
                family.add_metric([name], histogram.cumulative(), sum_value=histogram.sum)
            yield family
        yield per_pipeline(
            GaugeMetricFamily(
                "indexer_watermark",
                "The next checkpoint the pipeline has not committed.",
                labels=["pipeline"],
            ),
            (view.watermark for view in views),
        )
        yield per_pipeline(
            GaugeMetricFamily(
                "indexer_inflight_checkpoints",
                "Checkpoints read but not yet committed (the in-flight window).",
                labels=["pipeline"],
            ),
            (view.inflight for view in views),
        )
        latest = feed.latest if feed.latest is not None else feed.last_read
        if latest is not None:
            yield GaugeMetricFamily(
                "indexer_feed_latest_checkpoint",
                "The newest checkpoint the feed holds.",
                value=latest,
            )
            yield per_pipeline(
                GaugeMetricFamily(
                    "indexer_lag_checkpoints",
                    "Checkpoints in the feed above the pipeline's watermark.",
                    labels=["pipeline"],
                ),
                (max(0, latest + 1 - view.watermark) for view in views),
            )
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

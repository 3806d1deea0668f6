"""Prometheus metrics without a cost on the hot path.

The engine keeps plain counters and cheap histograms (``PipelineStats``, ``FeedStats``);
``IndexerCollector`` turns them into Prometheus metric families only when scraped. So a
processed checkpoint costs a few attribute increments, not a lock per metric update.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .executor import IndexerExecutor

__all__ = ["FeedStats", "Histogram", "IndexerCollector", "PipelineStats", "serve_metrics"]

SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
MESSAGES_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class Histogram:
    """A fixed-bucket histogram: one bisect and two additions per observation."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus buckets: ``(le, cumulative count)`` ending with ``+Inf``."""
        total = 0
        out: list[tuple[str, float]] = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return out


class PipelineStats:
    """Counters one pipeline updates as it runs; read by the collector, the CLI and tests."""

    __slots__ = (
        "batch_messages",
        "batches_committed",
        "batches_failed",
        "commit_seconds",
        "dead_letters",
        "processed",
        "processing_seconds",
        "retries",
    )

    def __init__(self) -> None:
        self.processed = 0
        self.retries = 0
        self.dead_letters = 0
        self.batches_committed = 0
        self.batches_failed = 0
        self.processing_seconds = Histogram(SECONDS_BUCKETS)
        self.commit_seconds = Histogram(SECONDS_BUCKETS)
        self.batch_messages = Histogram(MESSAGES_BUCKETS)


class FeedStats:
    """What the reader saw of the feed."""

    __slots__ = ("bytes_read", "last_read", "latest")

    def __init__(self) -> None:
        self.bytes_read = 0
        self.latest: int | None = None  # newest checkpoint the feed holds, when known
        self.last_read: int | None = None


class IndexerCollector(Collector):
    """Exposes an executor's stats as ``indexer_*`` metrics, computed at scrape time."""

    def __init__(self, executor: IndexerExecutor) -> None:
        self.executor = executor

    def collect(self) -> Iterator[Metric]:
        executor = self.executor
        feed = executor.feed_stats
        pools = executor.pools
        names = [pool.name for pool in pools]

        def per_pipeline(family: Any, values: Iterable[float]) -> Any:
            for name, value in zip(names, values, strict=True):
                family.add_metric([name], value)
            return family

        stats = [pool.stats for pool in pools]
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
            (pool.watermark for pool in pools),
        )
        yield per_pipeline(
            GaugeMetricFamily(
                "indexer_inflight_checkpoints",
                "Checkpoints read but not yet committed (the in-flight window).",
                labels=["pipeline"],
            ),
            (pool.inflight for pool in pools),
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
                (max(0, latest + 1 - pool.watermark) for pool in pools),
            )
        yield CounterMetricFamily(
            "indexer_feed_bytes", "Encoded checkpoint bytes read from the feed.", feed.bytes_read
        )


def serve_metrics(executor: IndexerExecutor, host: str, port: int) -> Any:
    """Serve the executor's metrics (and the process's) on ``host:port``; returns the server."""
    from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR

    registry = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    registry.register(IndexerCollector(executor))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server

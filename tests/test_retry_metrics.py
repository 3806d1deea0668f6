"""``indexer_retries_total{pipeline,reason}``: every retried failure counts under its reason,
``checkpoint`` (a process_checkpoint call), ``commit`` (a reducer commit) or ``watermark`` (a
progress-store write: the watermark save), and the scrape passes ``promtool check metrics``."""

from __future__ import annotations

from typing import Any

from harness import check_metrics_with_promtool
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from indexer import Checkpoint, IndexerExecutor, RetryPolicy, Worker, WorkerPool
from indexer.metrics import IndexerCollector
from indexer.progress import MemoryProgressStore
from indexer.sources import MemorySource
from indexer.testing import RecordingReducer, make_checkpoints

COUNT = 20
FAST = RetryPolicy(initial=0.001, max_delay=0.001, jitter=0.0)


class FailsTwice(Worker[Checkpoint, int]):
    """Checkpoint ``at`` fails twice (a service that is briefly down), then succeeds."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.failures = 0

    async def process_checkpoint(self, checkpoint: Checkpoint) -> int:
        if checkpoint.sequence_number == self.at and self.failures < 2:
            self.failures += 1
            raise ConnectionError("connection refused")
        return checkpoint.sequence_number


class CommitFailsOnce(RecordingReducer[int]):
    def __init__(self) -> None:
        super().__init__(max_batch_size=5, max_batch_age=None, commit_retry=FAST)
        self.failed = False

    async def commit(self, batch: list[int]) -> None:
        if not self.failed:
            self.failed = True
            raise ConnectionError("commit lost its connection")
        await super().commit(batch)


class SaveFailsOnce(MemoryProgressStore):
    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    async def save(self, pipeline: str, watermark: int) -> int:
        if not self.failed:
            self.failed = True
            raise ConnectionError("store lost its connection")
        return await super().save(pipeline, watermark)


def retries(text: str) -> dict[tuple[str, str], float]:
    """(pipeline, reason) -> value of every ``indexer_retries_total`` sample."""
    found = {}
    for family in text_string_to_metric_families(text):
        if family.name == "indexer_retries":
            assert family.type == "counter"
            for sample in family.samples:
                if sample.name == "indexer_retries_total":
                    labels = sample.labels
                    found[(labels["pipeline"], labels["reason"])] = sample.value
    return found


async def test_retries_are_counted_by_reason() -> None:
    executor = IndexerExecutor(SaveFailsOnce(), handle_signals=False, tune_gc=False)
    reducer = CommitFailsOnce()
    executor.register(WorkerPool(FailsTwice(at=7), name="p", reducer=reducer, retry=FAST))
    quiet = RecordingReducer[int](max_batch_size=5, max_batch_age=None)
    executor.register(WorkerPool(FailsTwice(at=-1), name="quiet", reducer=quiet))
    assert await executor.run(MemorySource(make_checkpoints(COUNT))) == {"p": COUNT, "quiet": COUNT}
    assert reducer.messages == list(range(COUNT))  # every message once, despite the retries

    registry = CollectorRegistry()
    registry.register(IndexerCollector(executor.job))
    text = generate_latest(registry).decode()
    found: dict[Any, float] = retries(text)
    # The store's one failed save was the first pipeline's to save; which one is not fixed.
    watermark = {pipeline: found.pop((pipeline, "watermark")) for pipeline in ("p", "quiet")}
    assert sorted(watermark.values()) == [0, 1]
    assert found == {
        ("p", "checkpoint"): 2,
        ("p", "commit"): 1,
        ("quiet", "checkpoint"): 0,
        ("quiet", "commit"): 0,
    }
    check_metrics_with_promtool(text)

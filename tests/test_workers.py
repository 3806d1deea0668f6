"""The ready-made workers over realistic synthetic checkpoints, against direct computations."""

from __future__ import annotations

import fnmatch
from collections import Counter
from pathlib import Path

import msgspec
import pytest

from indexer import Checkpoint, ConfigurationError
from indexer.checkpoint import encode_checkpoint
from indexer.sources import SyntheticSource
from indexer.testing import run_worker
from reducers import ArchivedCheckpoint
from workers import (
    ActivityCounter,
    CheckpointArchiver,
    Counts,
    EventExtractor,
    EventRow,
    merge_counts,
)

COUNT = 200


@pytest.fixture(scope="module")
def checkpoints() -> list[Checkpoint]:
    source = SyntheticSource(seed=1)
    return [source.checkpoint_at(n) for n in range(COUNT)]


def expected_events(checkpoints: list[Checkpoint], patterns: list[str]) -> list[EventRow]:
    return [
        EventRow(
            c.sequence_number,
            tx.digest,
            i,
            event.type,
            msgspec.json.encode(event.payload).decode(),
        )
        for c in checkpoints
        for tx in c.transactions
        for i, event in enumerate(tx.events)
        if any(fnmatch.fnmatchcase(event.type, p) for p in patterns)
    ]


@pytest.mark.parametrize(
    "patterns",
    [["*"], ["dex::*"], ["coin::Transfer", "nft::*"], ["*::Stake", "oracle::Price*"], ["none::*"]],
)
async def test_event_extractor_filters_by_glob(
    checkpoints: list[Checkpoint], patterns: list[str]
) -> None:
    result = await run_worker(EventExtractor(patterns), checkpoints, concurrency=8)
    assert result.watermark == COUNT
    assert len(result.messages) == COUNT
    rows = [row for message in result.messages for row in message]
    assert rows == expected_events(checkpoints, patterns)
    if patterns == ["*"]:
        assert len(rows) == sum(len(tx.events) for c in checkpoints for tx in c.transactions)
        assert {row.type for row in rows} == {
            "coin::Transfer",
            "dex::Swap",
            "nft::Mint",
            "staking::Stake",
            "oracle::PriceUpdate",
        }
    elif patterns == ["dex::*"]:
        assert rows and {row.type for row in rows} == {"dex::Swap"}
    elif patterns == ["none::*"]:
        assert rows == []


async def test_event_rows_payload_round_trips(checkpoints: list[Checkpoint]) -> None:
    result = await run_worker(EventExtractor(), checkpoints[:20])
    rows = [row for message in result.messages for row in message]
    payloads = [e.payload for c in checkpoints[:20] for tx in c.transactions for e in tx.events]
    assert [msgspec.json.decode(row.payload_json) for row in rows] == payloads
    assert all(" " not in row.payload_json for row in rows)  # compact JSON
    assert list(EventExtractor.columns) == list(EventRow._fields)


def test_event_extractor_rejects_a_string_pattern() -> None:
    with pytest.raises(ConfigurationError):
        EventExtractor("dex::*")


async def test_activity_counter_counts_senders_and_event_types(
    checkpoints: list[Checkpoint],
) -> None:
    result = await run_worker(ActivityCounter(), checkpoints, concurrency=8)
    assert result.watermark == COUNT
    senders = Counter(tx.sender for c in checkpoints for tx in c.transactions)
    types = Counter(e.type for c in checkpoints for tx in c.transactions for e in tx.events)
    expected = Counter({("sender", s): n for s, n in senders.items()})
    expected.update({("event_type", t): n for t, n in types.items()})
    assert all(isinstance(m, Counts) for m in result.messages)
    assert merge_counts(result.messages) == expected
    first = checkpoints[0]
    assert result.messages[0] == Counts(
        [("sender", tx.sender) for tx in first.transactions]
        + [("event_type", e.type) for tx in first.transactions for e in tx.events]
    )


async def test_activity_counter_by_one_dimension(checkpoints: list[Checkpoint]) -> None:
    result = await run_worker(ActivityCounter(by=["event_type"]), checkpoints)
    types = Counter(e.type for c in checkpoints for tx in c.transactions for e in tx.events)
    assert merge_counts(result.messages) == {("event_type", t): n for t, n in types.items()}
    with pytest.raises(ConfigurationError, match="recipient"):
        ActivityCounter(by=["recipient"])


def test_counts_merge() -> None:
    a = Counts({("sender", "0x1"): 2, ("event_type", "dex::Swap"): 1})
    b = Counts({("sender", "0x1"): 3, ("sender", "0x2"): 1})
    assert a.merge(b) is a
    assert a == {("sender", "0x1"): 5, ("sender", "0x2"): 1, ("event_type", "dex::Swap"): 1}
    assert b == {("sender", "0x1"): 3, ("sender", "0x2"): 1}
    assert merge_counts([b, b, {("x", "y"): 4}]) == {
        ("sender", "0x1"): 6,
        ("sender", "0x2"): 2,
        ("x", "y"): 4,
    }
    assert merge_counts([]) == Counts()


async def test_checkpoint_archiver_emits_encoded_bytes(
    checkpoints: list[Checkpoint], tmp_path: Path
) -> None:
    archiver = CheckpointArchiver(str(tmp_path), checkpoints_per_bundle=50)
    result = await run_worker(archiver, checkpoints, concurrency=4)
    assert result.messages == [
        ArchivedCheckpoint(c.sequence_number, encode_checkpoint(c)) for c in checkpoints
    ]
    sink = archiver.sink()
    assert (sink.directory, sink.checkpoints_per_bundle, sink.max_batch_size) == (tmp_path, 50, 50)
    with pytest.raises(ConfigurationError):
        CheckpointArchiver(str(tmp_path), checkpoints_per_bundle=0)

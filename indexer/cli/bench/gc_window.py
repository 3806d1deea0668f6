"""gc-window: decoding with a wide window of decoded checkpoints alive, under the collector
settings a run uses, against msgspec's defaults.

A pipeline keeps up to ``max_inflight`` decoded checkpoints alive. With msgspec's default
(Structs the cyclic collector tracks) and CPython's thresholds, every generation-0 collection
walks them again. The framework's ``Checkpoint`` Structs are ``gc=False`` and a run raises the
first-generation threshold (``indexer._gc.tuned_gc``); both sides decode the same ~2 KB
checkpoints while the last ``WINDOW`` stay alive.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import msgspec

from ..._gc import tuned_gc
from ...checkpoint import Checkpoint, encode_checkpoint
from ._common import Result, best_interleaved, templates

WINDOW = 8192


class _Event(msgspec.Struct):
    type: str
    payload: dict[str, Any] = {}


class _Transaction(msgspec.Struct):
    digest: str
    sender: str
    events: list[_Event] = []


class _TrackedCheckpoint(msgspec.Struct):
    """``Checkpoint``'s fields in Structs the collector tracks (msgspec's default)."""

    sequence_number: int
    timestamp_ms: int
    epoch: int = 0
    transactions: list[_Transaction] = []


def _decode_all(decoder: msgspec.msgpack.Decoder[Any], blobs: list[bytes], window: int) -> float:
    alive: collections.deque[Any] = collections.deque(maxlen=window)
    started = time.perf_counter()
    for blob in blobs:
        alive.append(decoder.decode(blob))
    return time.perf_counter() - started


def run(quick: bool, event_loop: str = "auto") -> list[Result]:
    count = 10_000 if quick else 50_000
    rounds = 2 if quick else 3
    distinct = [encode_checkpoint(checkpoint) for checkpoint in templates()]
    blobs = [distinct[n % len(distinct)] for n in range(count)]
    tracked = msgspec.msgpack.Decoder(_TrackedCheckpoint)
    untracked = msgspec.msgpack.Decoder(Checkpoint)

    def tuned() -> float:
        with tuned_gc():
            return _decode_all(untracked, blobs, WINDOW)

    best = best_interleaved(
        rounds,
        {
            "default": lambda: _decode_all(tracked, blobs, WINDOW),
            "untuned": lambda: _decode_all(untracked, blobs, WINDOW),
            "framework": tuned,
        },
    )
    default, framework, untuned = best["default"], best["framework"], best["untuned"]
    details = {
        "window": WINDOW,
        "decoded": count,
        "us_per_checkpoint": round(framework / count * 1e6, 2),
        "tracked_default_us": round(default / count * 1e6, 2),
        "gc_false_default_thresholds_us": round(untuned / count * 1e6, 2),
    }
    return [Result.throughput("gc-window", count, framework, default, bar=1.0, details=details)]

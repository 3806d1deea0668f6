"""Decoding cost with a window of decoded checkpoints kept alive, under garbage-collector settings.

A pipeline keeps up to ``max_inflight`` decoded checkpoints alive; CPython's cyclic collector
then rescans them on every generation-0 collection. This measures msgpack decoding of the same
2 KB checkpoints while the last ``--window`` stay alive, for:

- ``tracked``: Structs that the collector tracks (msgspec's default), default thresholds;
- ``gc_false``: the framework's ``gc=False`` Structs, default thresholds;
- ``gc_false_tuned``: ``gc=False`` Structs inside ``tuned_gc()`` (what a run uses).

    python benchmarks/gc_window.py [--count 50000] [--windows 1 2048 8192]
"""

from __future__ import annotations

import argparse
import collections
import gc
import time
from typing import Any

import msgspec

from indexer._gc import tuned_gc
from indexer.checkpoint import Checkpoint, encode_checkpoint
from indexer.sources import SyntheticSource


class TEvent(msgspec.Struct):
    type: str
    payload: dict[str, Any] = {}


class TTransaction(msgspec.Struct):
    digest: str
    sender: str
    events: list[TEvent] = []


class TCheckpoint(msgspec.Struct):
    sequence_number: int
    timestamp_ms: int
    epoch: int = 0
    transactions: list[TTransaction] = []


def run(decoder: msgspec.msgpack.Decoder[Any], blobs: list[bytes], window: int) -> float:
    alive: collections.deque[Any] = collections.deque(maxlen=window)
    started = time.perf_counter()
    for blob in blobs:
        alive.append(decoder.decode(blob))
    return (time.perf_counter() - started) / len(blobs) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--windows", type=int, nargs="+", default=[1, 2048, 8192])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    source = SyntheticSource(seed=7)
    distinct = [encode_checkpoint(source.checkpoint_at(n)) for n in range(2000)]
    blobs = [distinct[n % len(distinct)] for n in range(args.count)]
    tracked = msgspec.msgpack.Decoder(TCheckpoint)
    untracked = msgspec.msgpack.Decoder(Checkpoint)

    def best(decoder: msgspec.msgpack.Decoder[Any], window: int, tuned: bool = False) -> float:
        times = []
        for _ in range(args.rounds):
            gc.collect()
            with tuned_gc(tuned):
                times.append(run(decoder, blobs, window))
        return min(times)

    print(f"us to decode one ~2 KB checkpoint, {args.count} decoded, the last `window` alive")
    print(f"{'window':>8} {'tracked':>9} {'gc_false':>9} {'gc_false_tuned':>15}")
    for window in args.windows:
        row = (best(tracked, window), best(untracked, window), best(untracked, window, True))
        print(f"{window:>8} {row[0]:>9.2f} {row[1]:>9.2f} {row[2]:>15.2f}")


if __name__ == "__main__":
    main()

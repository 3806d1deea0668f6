"""ActivityCounter: per-checkpoint activity counts that merge into running totals."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from indexer import Checkpoint, ConfigurationError, Worker

Key = tuple[str, str]  # (dimension, key), e.g. ("sender", "0xab...") or ("event_type", "dex::Swap")


class Counts(Counter[Key]):
    """A mapping ``(dimension, key) -> count`` whose values add up when merged.

    ``checkpoint`` is the checkpoint counted, when one is (``ActivityCounter`` sets it): a
    ``CounterSink`` under a retention keeps counts by checkpoint to take old ones back out."""

    checkpoint: int | None = None

    def merge(self, other: Mapping[Key, int]) -> Counts:
        """Add ``other``'s counts into this one (in place); returns self."""
        for key, count in other.items():
            self[key] += count
        return self


def merge_counts(counts: Iterable[Mapping[Key, int]]) -> Counts:
    """One ``Counts`` holding the sum of all of ``counts``."""
    total = Counts()
    for item in counts:
        total.merge(item)
    return total


def _senders(checkpoint: Checkpoint) -> Iterator[str]:
    return (tx.sender for tx in checkpoint.transactions)


def _event_types(checkpoint: Checkpoint) -> Iterator[str]:
    return (event.type for tx in checkpoint.transactions for event in tx.events)


#: The dimensions ActivityCounter can count: each yields one key per counted occurrence.
DIMENSIONS: dict[str, Callable[[Checkpoint], Iterator[str]]] = {
    "sender": _senders,  # transactions per sender address
    "event_type": _event_types,  # events per event type
}


class ActivityCounter(Worker[Checkpoint, Counts]):
    """Counts each checkpoint's activity along the dimensions in ``by``: transactions per
    ``"sender"`` and events per ``"event_type"``. Pair it with ``reducers.CounterSink``, which
    adds the counts into totals."""

    name = "activity"

    def __init__(self, by: Sequence[str] = ("sender", "event_type")) -> None:
        if isinstance(by, str):
            raise ConfigurationError(f"ActivityCounter by must be a list of names, got {by!r}")
        unknown = [d for d in by if d not in DIMENSIONS]
        if unknown or not by:
            raise ConfigurationError(
                f"ActivityCounter by={list(by)!r}: choose one or more of {sorted(DIMENSIONS)}"
            )
        self.by = list(dict.fromkeys(by))
        self._dimensions = [(d, DIMENSIONS[d]) for d in self.by]

    async def process_checkpoint(self, checkpoint: Checkpoint) -> Counts:
        counts = Counts()
        counts.checkpoint = checkpoint.sequence_number
        for dimension, keys in self._dimensions:
            counts.update((dimension, key) for key in keys(checkpoint))
        return counts

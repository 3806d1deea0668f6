"""A deterministic generator of realistic checkpoints, for demos, tests and benchmarks."""

from __future__ import annotations

import asyncio
import random
from bisect import bisect
from collections.abc import AsyncGenerator, Callable
from itertools import accumulate
from typing import Any

from ..checkpoint import Checkpoint, CheckpointDecoder, Event, Transaction, encode_checkpoint
from ..errors import ConfigurationError
from ._base import CheckpointSource, SourcedBatch

_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
# Maps each random byte to a base58 character (a slight bias is fine for synthetic digests).
_BASE58_TABLE = bytes(_BASE58[i % 58].encode()[0] for i in range(256))
_ADDRESS_POOL_SIZE = 500
_EVENTS_PER_TX_WEIGHTS = tuple(accumulate((20, 40, 25, 10, 5)))  # 0-4 events, mean 1.4
_COINS = ("SUI", "USDC", "USDT", "WETH", "CETUS")
_FEEDS = ("BTC/USD", "ETH/USD", "SUI/USD", "SOL/USD", "USDC/USD")
_COLLECTIONS = ("capys", "suifrens", "ghosts", "punks", "apes")
_MAX_AMOUNT = 10**18


def _zigzag(value: int) -> int:
    """Map any int to a distinct non-negative one (Random() would drop the sign of a seed)."""
    return value * 2 if value >= 0 else -value * 2 - 1


def _amount(rng: random.Random, mu: float) -> int:
    return min(_MAX_AMOUNT, int(rng.lognormvariate(mu, 2.0)) + 1)


class SyntheticSource(CheckpointSource):
    """An endless (or ``count``-long) feed of generated checkpoints, reproducible from ``seed``.

    ``checkpoint_at(n)`` is a pure function of ``(seed, n)``, so any range can be generated on its
    own. Each checkpoint holds 1-20 transactions (mean ~8) with 0-4 events each, of five weighted
    event types; senders come from a skewed pool of 500 addresses. Measured with
    ``encode_checkpoint`` over checkpoints 0-999 of seeds 0-4: mean encoded size 2,038-2,117
    bytes (range 174-6,041), ~8.1 transactions and ~11 events each.
    """

    def __init__(
        self,
        seed: int = 0,
        count: int | None = None,
        *,
        start_timestamp_ms: int = 1_700_000_000_000,
        batch_size: int = 256,
    ) -> None:
        if count is not None and count < 0:
            raise ConfigurationError(f"must be >= 0 or unset, got {count}", key="count")
        if batch_size < 1:
            raise ConfigurationError(f"must be >= 1, got {batch_size}", key="batch_size")
        self.seed = seed
        self.count = count
        self.start_timestamp_ms = start_timestamp_ms
        self.batch_size = batch_size
        pool_rng = random.Random(f"addresses:{seed}")
        self._addresses = [f"0x{pool_rng.getrandbits(160):040x}" for _ in range(_ADDRESS_POOL_SIZE)]
        # Zipf-like activity: a few addresses send much of the traffic, most send a little.
        self._address_weights = list(
            accumulate(1.0 / (rank + 1) ** 0.8 for rank in range(_ADDRESS_POOL_SIZE))
        )
        self._address_total = self._address_weights[-1]
        self._payloads: dict[str, Callable[[random.Random], dict[str, Any]]] = {
            "coin::Transfer": self._transfer,
            "dex::Swap": self._swap,
            "nft::Mint": self._mint,
            "staking::Stake": self._stake,
            "oracle::PriceUpdate": self._price_update,
        }
        self._event_types = tuple(self._payloads)
        self._event_type_weights = tuple(accumulate((45, 20, 10, 10, 15)))

    def _address(self, rng: random.Random) -> str:
        index = bisect(self._address_weights, rng.random() * self._address_total)
        return self._addresses[min(index, _ADDRESS_POOL_SIZE - 1)]

    def _transfer(self, rng: random.Random) -> dict[str, Any]:
        return {
            "recipient": self._address(rng),
            "amount": _amount(rng, 18.0),
            "coin": rng.choice(_COINS),
        }

    def _swap(self, rng: random.Random) -> dict[str, Any]:
        amount_in = _amount(rng, 17.0)
        return {
            "pool": f"pool-{rng.randrange(64)}",
            "amount_in": amount_in,
            "amount_out": max(1, int(amount_in * rng.uniform(0.2, 5.0))),
            "a_to_b": rng.random() < 0.5,
        }

    def _mint(self, rng: random.Random) -> dict[str, Any]:
        return {
            "collection": rng.choice(_COLLECTIONS),
            "token_id": rng.randrange(1_000_000),
            "recipient": self._address(rng),
        }

    def _stake(self, rng: random.Random) -> dict[str, Any]:
        return {
            "validator": self._addresses[rng.randrange(20)],
            "amount": _amount(rng, 21.0),
            "auto_compound": rng.random() < 0.3,
        }

    def _price_update(self, rng: random.Random) -> dict[str, Any]:
        return {
            "feed": rng.choice(_FEEDS),
            "price": rng.randrange(1, 10**13),
            "confidence": rng.randrange(1, 10**7),
            "decimals": 8,
        }

    def checkpoint_at(self, n: int) -> Checkpoint:
        """Generate checkpoint ``n``; the same ``(seed, n)`` always gives an equal checkpoint."""
        if not 0 <= n < 1 << 64:
            raise ValueError(f"sequence number must be in [0, 2**64), got {n}")
        rng = random.Random(_zigzag(self.seed) << 64 | n)  # one distinct seed per (seed, n)
        # 250 ms apart with up to 100 ms of jitter either way: strictly increasing.
        timestamp_ms = self.start_timestamp_ms + n * 250 + rng.randint(-100, 100)
        tx_count = max(1, min(20, round(rng.gauss(8.0, 4.0))))
        random_ = rng.random
        types, type_weights = self._event_types, self._event_type_weights
        transactions = []
        for _ in range(tx_count):
            events = []
            for _ in range(bisect(_EVENTS_PER_TX_WEIGHTS, random_() * 100)):
                kind = types[bisect(type_weights, random_() * 100)]
                events.append(Event(type=kind, payload=self._payloads[kind](rng)))
            transactions.append(
                Transaction(
                    digest=rng.randbytes(44).translate(_BASE58_TABLE).decode(),
                    sender=self._address(rng),
                    events=events,
                )
            )
        return Checkpoint(
            sequence_number=n,
            timestamp_ms=timestamp_ms,
            epoch=n // 10_000,
            transactions=transactions,
        )

    def stream(
        self, start: int, decoder: CheckpointDecoder[Any]
    ) -> AsyncGenerator[SourcedBatch, None]:
        """Yield generated checkpoints from ``start`` (until ``count``) with their encoded sizes."""
        return self._generate(start, self.count, decoder)

    def stream_to(
        self, start: int, last: int, decoder: CheckpointDecoder[Any]
    ) -> AsyncGenerator[SourcedBatch, None]:
        """``stream`` that generates nothing past ``last``."""
        stop = last + 1 if self.count is None else min(self.count, last + 1)
        return self._generate(start, stop, decoder)

    async def _generate(
        self, start: int, stop: int | None, decoder: CheckpointDecoder[Any]
    ) -> AsyncGenerator[SourcedBatch, None]:
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        kind = decoder.checkpoint_type
        native = isinstance(kind, type) and issubclass(Checkpoint, kind)
        origin = f"<synthetic seed={self.seed}>"
        n = start
        while stop is None or n < stop:
            end = n + self.batch_size
            if stop is not None:
                end = min(end, stop)
            batch: SourcedBatch = []
            for i in range(n, end):
                checkpoint = self.checkpoint_at(i)
                data = encode_checkpoint(checkpoint)
                if native:
                    batch.append((checkpoint, len(data)))
                else:
                    batch.append(
                        (decoder.decode(data, sequence_number=i, origin=origin), len(data))
                    )
            n = end
            yield batch
            # Generation is CPU work on the loop thread: let other tasks run between batches.
            await asyncio.sleep(0)

    async def latest_sequence_number(self) -> int | None:
        """``count - 1`` for a finite feed (None when empty), None for an endless one."""
        if self.count is None or self.count == 0:
            return None
        return self.count - 1

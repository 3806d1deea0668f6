"""The checkpoint data model and its decoder.

Checkpoints are msgspec Structs stored as msgpack, one per ``{sequence_number}.chk`` file.
The structs are ``gc=False``: a wide in-flight window keeps thousands of decoded checkpoints
alive, and letting the cyclic garbage collector walk them costs more than decoding them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, Literal, TypeVar

import msgspec

from .errors import CheckpointDecodeError


class Event(msgspec.Struct, gc=False):
    """One event emitted by a transaction: a type name and a free-form payload."""

    type: str
    payload: dict[str, Any] = msgspec.field(default_factory=dict)


class Transaction(msgspec.Struct, gc=False):
    """One transaction of a checkpoint."""

    digest: str
    sender: str
    events: list[Event] = msgspec.field(default_factory=list)


class Checkpoint(msgspec.Struct, gc=False):
    """One numbered checkpoint of the feed: the unit of work handed to a Worker."""

    sequence_number: int
    timestamp_ms: int
    epoch: int = 0
    transactions: list[Transaction] = msgspec.field(default_factory=list)


CheckpointT = TypeVar("CheckpointT")

_encoder = msgspec.msgpack.Encoder()


def encode_checkpoint(checkpoint: Any) -> bytes:
    """Encode a checkpoint (any msgspec Struct) as the msgpack bytes of a ``.chk`` file."""
    return _encoder.encode(checkpoint)


class CheckpointDecoder(Generic[CheckpointT]):
    """Decodes msgpack (or, with ``codec="json"``, JSON) bytes into a checkpoint type and checks
    the sequence number.

    One decoder is built per executor run; it reuses a typed msgspec decoder, which is what makes
    decoding cheap.
    """

    def __init__(
        self,
        checkpoint_type: type[CheckpointT] = Checkpoint,  # type: ignore[assignment]
        codec: Literal["msgpack", "json"] = "msgpack",
    ) -> None:
        self.checkpoint_type = checkpoint_type
        self.codec = codec
        self._decoder: msgspec.msgpack.Decoder[CheckpointT] | msgspec.json.Decoder[CheckpointT] = (
            msgspec.json.Decoder(checkpoint_type)
            if codec == "json"
            else msgspec.msgpack.Decoder(checkpoint_type)
        )

    def decode(self, data: bytes, *, sequence_number: int, origin: str) -> CheckpointT:
        """Decode ``data``; ``origin`` (a file name or URL) and the number go into errors."""
        decoded, error = self.decode_run([data], sequence_number, lambda _: origin)
        if error is not None:
            raise error
        return decoded[0][0]

    def decode_run(
        self, contents: Sequence[bytes], first: int, origin: Callable[[int], str]
    ) -> tuple[list[tuple[CheckpointT, int]], CheckpointDecodeError | None]:
        """Decode checkpoints ``first, first + 1, ...`` from ``contents``: the
        ``(checkpoint, size)`` pairs before the first bad one, and that one's error (None when
        all decoded). ``origin(n)`` names checkpoint ``n``'s file; it is called only for an
        error, which keeps a source's loop over thousands of files tight."""
        decode = self._decoder.decode
        decoded: list[tuple[CheckpointT, int]] = []
        append = decoded.append
        n = first
        for data in contents:
            try:
                checkpoint = decode(data)
            except msgspec.DecodeError as exc:
                return decoded, CheckpointDecodeError(
                    f"{origin(n)}: checkpoint {n} cannot be decoded as "
                    f"{self.checkpoint_type.__name__}: {exc}"
                )
            if checkpoint.sequence_number != n:  # type: ignore[attr-defined]
                actual = checkpoint.sequence_number  # type: ignore[attr-defined]
                return decoded, CheckpointDecodeError(
                    f"{origin(n)}: holds checkpoint {actual}, expected {n}"
                )
            append((checkpoint, len(data)))
            n += 1
        return decoded, None

    def convert(self, checkpoint: Any) -> CheckpointT:
        """Return ``checkpoint`` as this decoder's type (a no-op when it already is one)."""
        if isinstance(checkpoint, self.checkpoint_type):
            return checkpoint
        return self.decode(
            encode_checkpoint(checkpoint),
            sequence_number=checkpoint.sequence_number,
            origin="<memory>",
        )

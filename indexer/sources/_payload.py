"""A remote feed file's bytes as a checkpoint: decompressed by the file name's suffix, decoded
by the feed's codec or a user's hook, its sequence number checked."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import msgspec

from ..checkpoint import CheckpointDecoder
from ..errors import CheckpointDecodeError, ConfigurationError

__all__ = ["Codec", "PayloadDecoder", "check_file_template", "compression_of"]

Codec = Literal["msgpack", "json"]
#: A user's decode hook: a file's (decompressed) bytes to a checkpoint.
DecodeHook = Callable[[bytes], Any]
#: Suffixes of compressed files, and what they are.
_COMPRESSIONS = {".zst": "zstd", ".gz": "gzip"}


def check_file_template(template: str) -> str:
    """``template`` if ``template.format(seq=n)`` names one file per number, else why not."""
    if "{seq" not in template:
        raise ConfigurationError(f"must contain '{{seq}}', got {template!r}", key="file_template")
    try:
        first, second = template.format(seq=0), template.format(seq=1)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigurationError(
            f"is not a format string of {{seq}} ({exc!r}): {template!r}", key="file_template"
        ) from None
    if first == second:
        raise ConfigurationError(
            f"names one file for every number: {template!r}", key="file_template"
        )
    return template


def compression_of(template: str) -> str | None:
    """The compression a file name's suffix says (``zstd`` for ``.zst``, ``gzip`` for
    ``.gz``), None for none."""
    return next((kind for suffix, kind in _COMPRESSIONS.items() if template.endswith(suffix)), None)


def _decompressor(kind: str | None) -> Callable[[bytes], bytes] | None:
    if kind == "zstd":
        import zstandard

        decompressor = zstandard.ZstdDecompressor()

        def unzstd(data: bytes) -> bytes:
            # A streaming object: frames written without their content size decode too.
            return decompressor.decompressobj().decompress(data)

        return unzstd
    if kind == "gzip":
        import gzip  # here: a feed of plain files need not import it (nor zlib)

        return gzip.decompress
    return None


class PayloadDecoder:
    """Decodes the files named by ``file_template`` into the checkpoint type of ``decoder``:
    decompressed by suffix, then decoded with ``codec`` or, given one, by ``hook`` (what it
    returns, a dict or an object with the type's attributes, is converted to that type).
    Every failure is a ``CheckpointDecodeError`` naming the file and the checkpoint."""

    def __init__(
        self,
        decoder: CheckpointDecoder[Any],
        *,
        file_template: str,
        codec: Codec = "msgpack",
        hook: DecodeHook | None = None,
    ) -> None:
        self.compression = compression_of(file_template)
        self._decompress = _decompressor(self.compression)
        self._decoder = (
            decoder if decoder.codec == codec else CheckpointDecoder(decoder.checkpoint_type, codec)
        )
        self._hook = hook

    def decode(self, data: bytes, n: int, origin: Callable[[int], str]) -> tuple[Any, int]:
        """Checkpoint ``n`` from ``data``, and the file's size; ``origin(n)`` names the file in
        an error (called only then)."""
        size = len(data)
        if self._decompress is not None:
            try:
                data = self._decompress(data)
            except Exception as exc:  # zstandard.ZstdError, zlib.error, EOFError, ...
                raise CheckpointDecodeError(
                    f"{origin(n)}: checkpoint {n} cannot be decompressed ({self.compression}): "
                    f"{exc}"
                ) from None
        if self._hook is None:
            decoded, error = self._decoder.decode_run((data,), n, origin)
            if error is not None:
                raise error
            return decoded[0][0], size
        try:
            made = self._hook(data)
        except Exception as exc:
            raise CheckpointDecodeError(
                f"{origin(n)}: the decode hook failed on checkpoint {n}: {exc!r}"
            ) from None
        kind = self._decoder.checkpoint_type
        try:
            checkpoint = (
                made
                if isinstance(made, kind)
                else msgspec.convert(made, kind, from_attributes=True)
            )
        except (msgspec.ValidationError, TypeError, ValueError) as exc:
            raise CheckpointDecodeError(
                f"{origin(n)}: the decode hook's checkpoint {n} is not a {kind.__name__}: {exc}"
            ) from None
        actual = getattr(checkpoint, "sequence_number", None)
        if actual != n:
            raise CheckpointDecodeError(f"{origin(n)}: holds checkpoint {actual}, expected {n}")
        return checkpoint, size

"""The ``[source]`` table: where checkpoints come from.

``feed`` names the feed: a directory (a path or a ``file://`` URL), an ``http(s)://`` server or an
object store (``s3://``, ``gs://``, ``az://``); ``kind = "synthetic"`` generates checkpoints
instead, and ``class`` names a user's ``CheckpointSource``. Each default is the library's own,
read from the class the key configures (``LocalDirectorySource``, ``RemoteFeedSource``,
``SyntheticSource``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Literal

import msgspec

from ..sources import LocalDirectorySource, RemoteFeedSource, SyntheticSource

__all__ = ["DEFAULT_FILE_TEMPLATE", "SourceConfig"]


def _default(target: Callable[..., Any], name: str) -> Any:
    """The default of ``target``'s parameter ``name``: a key's default is the library's."""
    return inspect.signature(target).parameters[name].default


DEFAULT_FILE_TEMPLATE: str = _default(RemoteFeedSource, "file_template")


class SourceConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Where checkpoints come from: the feed ``feed`` names (``kind = "feed"``, or ``"local"``,
    its earlier name), generated checkpoints (``"synthetic"``), or the ``CheckpointSource``
    that ``class`` names, built with ``options``."""

    kind: Literal["feed", "local", "synthetic"] = "feed"
    feed: str = "feed"
    cls: str | None = msgspec.field(name="class", default=None)
    #: ``class``'s constructor arguments; an object store's settings (credentials, region,
    #: endpoint, ...); an HTTP feed's ``headers``.
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    poll_interval: float = _default(LocalDirectorySource, "poll_interval")
    follow: bool = _default(LocalDirectorySource, "follow")
    batch_size: int = _default(LocalDirectorySource, "batch_size")
    # A local directory's
    delete_below_watermark: bool = _default(LocalDirectorySource, "delete_below_watermark")
    partial_file_grace: float = _default(LocalDirectorySource, "partial_file_grace")
    # How files are named and decoded (a directory with other than the defaults is read as an
    # object store of local files)
    file_template: str = DEFAULT_FILE_TEMPLATE
    codec: Literal["msgpack", "json"] = _default(RemoteFeedSource, "codec")
    decode: str | None = None
    # A remote feed's requests
    fetch_concurrency: int = _default(RemoteFeedSource, "fetch_concurrency")
    max_prefetch_bytes: int = _default(RemoteFeedSource, "max_prefetch_bytes")
    connect_timeout: float = _default(RemoteFeedSource, "connect_timeout")
    request_timeout: float = _default(RemoteFeedSource, "request_timeout")
    slow_request: float = _default(RemoteFeedSource, "slow_request")
    retry_initial: float = _default(RemoteFeedSource, "retry_initial")
    retry_max_delay: float = _default(RemoteFeedSource, "retry_max_delay")
    # Generated checkpoints'
    seed: int = _default(SyntheticSource, "seed")
    count: int | None = _default(SyntheticSource, "count")

    @property
    def reads_files_as_named(self) -> bool:
        """Whether files are ``{n}.chk`` msgpack decoded as they are (the local fast path)."""
        return (
            self.file_template == DEFAULT_FILE_TEMPLATE
            and self.codec == "msgpack"
            and self.decode is None
        )

    def remote_options(self) -> dict[str, Any]:
        """The keyword arguments of a ``RemoteFeedSource`` these settings give (but ``decode``,
        which the command imports)."""
        return {
            "file_template": self.file_template,
            "codec": self.codec,
            "follow": self.follow,
            "poll_interval": self.poll_interval,
            "batch_size": self.batch_size,
            "fetch_concurrency": self.fetch_concurrency,
            "max_prefetch_bytes": self.max_prefetch_bytes,
            "connect_timeout": self.connect_timeout,
            "request_timeout": self.request_timeout,
            "slow_request": self.slow_request,
            "retry_initial": self.retry_initial,
            "retry_max_delay": self.retry_max_delay,
        }

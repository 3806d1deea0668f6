"""What a feed's address names: a local directory (a path, or a ``file://`` URL), an HTTP(S)
server, or an object store (``s3://``, ``gs://``, ``az://``, ...)."""

from __future__ import annotations

from typing import Literal
from urllib.parse import unquote, urlsplit

from .._dsn import mask_dsn
from ..errors import ConfigurationError

__all__ = ["FeedKind", "feed_kind", "is_url", "local_feed_path"]

FeedKind = Literal["directory", "http", "object_store"]
#: URL schemes of object stores obstore reads (``file://`` is a directory, read locally).
_OBJECT_STORES = ("s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "adl")


def _scheme(feed: str) -> str:
    scheme, sep, _ = feed.partition("://")
    return scheme.lower() if sep and scheme.isascii() and scheme.isalnum() else ""


def feed_kind(feed: str) -> FeedKind:
    """Which kind of feed ``feed`` names (anything that is not a URL is a directory); a URL of
    another scheme is a configuration error."""
    scheme = _scheme(feed)
    if scheme in ("http", "https"):
        return "http"
    if scheme in _OBJECT_STORES:
        return "object_store"
    if scheme in ("", "file"):
        return "directory"
    raise ConfigurationError(
        f"has an unsupported URL scheme {scheme!r}: {mask_dsn(feed)!r} (a directory, file://, "
        "http://, https://, s3://, gs:// or az://)",
        key="feed",
    )


def is_url(feed: str) -> bool:
    """Whether ``feed`` is a URL (``scheme://...``) rather than a path."""
    return bool(_scheme(feed))


def local_feed_path(feed: str) -> str:
    """The directory a path or a ``file://`` URL names (a path as it is)."""
    if _scheme(feed) == "file":
        return unquote(urlsplit(feed).path)
    return feed

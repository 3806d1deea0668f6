"""Checkpoint sources: a local directory feed, remote feeds (HTTP, object stores), a synthetic
generator and an in-memory list.

The remote sources, the in-memory source and the feed writer load on first use (PEP 562):
``indexer run`` over a directory needs none of them.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes
from ._base import CheckpointSource, SourcedBatch
from .local import LocalDirectorySource
from .synthetic import SyntheticSource

if TYPE_CHECKING:
    from ._fetch_faults import FeedRequestRefused, TransientFetchError
    from ._location import feed_kind, is_url, local_feed_path
    from ._remote import RemoteFeedSource
    from .feed_writer import write_checkpoint_file, write_feed
    from .http import HttpSource
    from .memory import MemorySource
    from .object_store import ObjectStoreSource

__all__ = [
    "CheckpointSource",
    "FeedRequestRefused",
    "HttpSource",
    "LocalDirectorySource",
    "MemorySource",
    "ObjectStoreSource",
    "RemoteFeedSource",
    "SourcedBatch",
    "SyntheticSource",
    "TransientFetchError",
    "feed_kind",
    "is_url",
    "local_feed_path",
    "write_checkpoint_file",
    "write_feed",
]

_HOMES = {
    "FeedRequestRefused": "._fetch_faults",
    "HttpSource": ".http",
    "MemorySource": ".memory",
    "ObjectStoreSource": ".object_store",
    "RemoteFeedSource": "._remote",
    "TransientFetchError": "._fetch_faults",
    "feed_kind": "._location",
    "is_url": "._location",
    "local_feed_path": "._location",
    "write_checkpoint_file": ".feed_writer",
    "write_feed": ".feed_writer",
}

__getattr__ = lazy_attributes(__name__, _HOMES)

"""Ready-made Workers, usable from code or from the config by import string.

Each name loads its module on first use (PEP 562): ``workers:TransactionExtractor`` does not
import the archiver, and with it the archive sink and zstandard.
"""

from typing import TYPE_CHECKING

from indexer._lazy import lazy_attributes

if TYPE_CHECKING:
    from .archiver import CheckpointArchiver
    from .counter import ActivityCounter, Counts, merge_counts
    from .events import EventExtractor, EventRow
    from .transactions import TransactionExtractor, TransactionRow

__all__ = [
    "ActivityCounter",
    "CheckpointArchiver",
    "Counts",
    "EventExtractor",
    "EventRow",
    "TransactionExtractor",
    "TransactionRow",
    "merge_counts",
]

#: Public name -> the module that defines it.
_HOMES = {
    "CheckpointArchiver": ".archiver",
    "ActivityCounter": ".counter",
    "Counts": ".counter",
    "merge_counts": ".counter",
    "EventExtractor": ".events",
    "EventRow": ".events",
    "TransactionExtractor": ".transactions",
    "TransactionRow": ".transactions",
}

__getattr__ = lazy_attributes(__name__, _HOMES)


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])

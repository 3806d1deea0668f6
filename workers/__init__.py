"""Ready-made Workers, usable from code or from the config by import string."""

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

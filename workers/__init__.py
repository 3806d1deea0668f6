"""Ready-made Workers, usable from code or from the config by import string."""

from .transactions import TransactionExtractor, TransactionRow

__all__ = ["TransactionExtractor", "TransactionRow"]

"""The names in a feed directory: checkpoint files, writes in progress, and why any other name
is ignored (for the warning that names it)."""

from __future__ import annotations

import re

__all__ = ["FEED_NAME", "FEED_TEMP", "why_ignored"]

#: Canonical feed names only: ``007.chk`` or ``+7.chk`` would never be found by number.
FEED_NAME = re.compile(r"(0|[1-9][0-9]*)\.chk")
#: Temporary files of ``write_feed``: a write in progress, not a stray file worth a warning.
FEED_TEMP = re.compile(r"\.(0|[1-9][0-9]*)\.chk\.tmp")
#: A number as ``int()`` reads it, which the feed does not take: ``007``, ``+7``, ``-7``.
_LOOSE_NUMBER = re.compile(r"[+-]?[0-9]+")


def why_ignored(name: str) -> str:
    """Why the feed ignores a file named ``name`` (not ``{n}.chk``)."""
    stem, dot_chk, rest = name.rpartition(".chk")
    if not dot_chk or rest:
        return "not a .chk file"
    if _LOOSE_NUMBER.fullmatch(stem) and int(stem) >= 0:
        return f"checkpoint {int(stem)} is read from {int(stem)}.chk only"
    return "the name before .chk is not a checkpoint number"

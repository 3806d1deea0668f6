"""A live feed's newest file that does not decode yet: its producer may still be writing it.

A producer should write each ``{n}.chk`` as a temporary file and rename it into place (as
``write_feed`` does): a rename is atomic, so a reader sees the whole file or none. One that
writes the file in place leaves it truncated for a moment, and a reader tailing the feed can
read it then.
"""

from __future__ import annotations

import time

__all__ = ["PartialFileGrace"]


class PartialFileGrace:
    """Whether a file that failed to decode is read again before its error counts.

    While the file is the feed's newest it is read again for ``grace`` seconds from its first
    failure. A file with newer files after it is corrupt (producers write in order): it is read
    once more, at once, since its writer may have finished it and started the next between the
    failed read and the look at the feed, and its error counts if that read fails too. A
    ``grace`` of 0 reads nothing again.
    """

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._number: int | None = None  # the file being given its grace
        self._deadline = 0.0
        self._newer_seen = False

    def is_new(self, n: int) -> bool:
        """Whether file ``n`` has not failed before (its grace would start now)."""
        return n != self._number

    def read_again(self, n: int, newer: bool) -> bool:
        """File ``n`` failed to decode, with (``newer``) or without files after it: read it
        again (True), or let its error count (False)."""
        if self.grace <= 0:
            return False
        now = time.monotonic()
        if self.is_new(n):
            self._number, self._deadline, self._newer_seen = n, now + self.grace, False
        if newer and not self._newer_seen:
            self._newer_seen = True
            return True
        return not self._newer_seen and now < self._deadline

"""Garbage-collector settings for a run.

A wide in-flight window keeps thousands of decoded checkpoints alive; with CPython's default
thresholds the cyclic collector then walks them again and again and costs more than decoding.
Checkpoint structs are ``gc=False`` already; this also freezes what start-up allocated and
raises the first-generation threshold for the duration of a run.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

#: First-generation threshold during a run (CPython's default is 700).
GEN0_THRESHOLD = 50_000


@contextlib.contextmanager
def tuned_gc(enabled: bool = True) -> Iterator[None]:
    """Freeze start-up objects and raise the gen-0 threshold; restore both on exit."""
    if not enabled:
        yield
        return
    previous = gc.get_threshold()
    # Only the young generation: a full collection walks the whole heap to free what start-up
    # left behind, and frozen garbage is given back to the collector by unfreeze at the end.
    gc.collect(0)
    gc.freeze()
    gc.set_threshold(max(previous[0], GEN0_THRESHOLD), previous[1], previous[2])
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()

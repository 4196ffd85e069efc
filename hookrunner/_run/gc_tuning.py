"""Python's garbage collector, set for a process that holds thousands of live calls.

With the defaults (700, 10, 10), a runner following hundreds of calls paused for full collections of 90-120 ms,
each walking every object start-up made (modules, classes, plugin state) and every object the calls keep, none of
them garbage: that set the tail of socket-to-hook latency. So the process that runs (``hookrunner run``) moves
what start-up made into the permanent generation (``gc.freeze``, the pattern CPython documents for long-running
servers), and collects the young generation less often. Events are not tracked at all (``Event`` is a
``gc=False`` struct). Reference counting still frees almost everything; only cycles wait for a collection.

Only the process's owner may do this (it is global): the CLI calls ``tune_gc`` before a run, ``hookrunner.testing``
and embedding applications do not.
"""

from __future__ import annotations

import gc

__all__ = ["tune_gc", "GC_THRESHOLDS"]

#: Young collections every 50,000 allocations net of frees (700 by default); the older generations as CPython has
#: them. A young collection walks only what was allocated since the last one, so fewer of them cost less in all.
GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """Collect once, freeze what survives (start-up's objects), and raise the young generation's threshold."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)

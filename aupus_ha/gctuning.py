"""Process-wide tuning for a long-running instance."""

from __future__ import annotations

import gc

# Young-generation threshold of the cyclic GC while the intake runs (CPython's default is
# 700). It counts allocations minus deallocations of container objects, so per-message
# garbage freed by reference counting does not trigger it; what does is the pending
# buffer growing. At 700, every buffered reading was promoted to the oldest generation
# and full collections over it cost 25-40 % of an instance's CPU under load
# (docs/performance.md). Unreferenced cycles are still collected, just in larger steps
# (a young collection of ~50,000 objects takes a few ms).
GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """Collect rarely and never rescan the start-up heap (modules, catalogue, settings):
    a long-running intake's garbage is almost all freed by reference counting."""
    gc.collect()
    gc.freeze()  # objects alive now move to a permanent generation no collection scans
    gc.set_threshold(*GC_THRESHOLDS)

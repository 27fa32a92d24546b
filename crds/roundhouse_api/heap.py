"""The garbage collector as a long-running server wants it: what start-up built (modules, clients,
the catalog) moved out of the collector's sight, and young collections less often.

Why: the gateway's heap after start-up is large and lives as long as the process, yet CPython's full
collections walk all of it. Under load each walk stalled the event loop for tens of milliseconds
(p99 at 64 connections 61-86 ms with it, 29-37 ms after settle()), and collections were 8% of the
gateway's CPU per request (perf; docs/benchmarks.md). Requests leave little cyclic garbage, so
fewer young collections cost memory only in the tens of kilobytes.
"""

from __future__ import annotations

import gc

YOUNG = 10_000  # allocations between young collections (CPython's default: 700)
MIDDLE, OLD = 20, 50  # young collections per middle one, middle ones per full one (defaults 10, 10)


def settle() -> None:
    """Once start-up is done: collect, freeze what survives (never walked again), and space collections."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG, MIDDLE, OLD)

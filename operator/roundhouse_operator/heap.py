"""The garbage collector as the operator wants it: what start-up built (modules, clients,
the store's first listing) moved out of the collector's sight, and young collections less often.

Why: the operator's store grows with the cluster and lives as long as the process, yet CPython's full
collections walk all of it: about 11% of the operator's CPU during a 100-engine apply (perf), and
16% less CPU at 1,000 engines with settle() (docs/benchmarks.md). Not for the gateway: there the
larger young generation, after a burst of 256 streams, put 70-100 ms stalls into the p99 at
200 requests/s.
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

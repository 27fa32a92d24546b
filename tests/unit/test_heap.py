"""heap.settle(): start-up's objects frozen, collections spaced (in a child process: the test run's own
collector stays as it is)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import gc
from roundhouse_operator import heap
kept = [[i] for i in range(1000)]  # start-up's long-lived objects
heap.settle()
print(gc.get_freeze_count() >= 1000, gc.get_threshold() == (heap.YOUNG, heap.MIDDLE, heap.OLD),
      heap.YOUNG > 700, gc.isenabled())
"""


def test_settle_freezes_start_up_and_spaces_collections() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True", "True", "True"]

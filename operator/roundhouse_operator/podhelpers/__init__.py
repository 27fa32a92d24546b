"""Small programs engine pods run from the operator's own image (no shell sees a user's string)."""

from __future__ import annotations

import json
import signal
import sys
import time
from types import FrameType


def log(event: str, **fields: object) -> None:
    """One JSON line on stderr, as the operator logs."""
    print(json.dumps({"ts": round(time.time(), 3), "event": event, **fields}), file=sys.stderr, flush=True)


def wait_for_termination() -> None:
    """Stay up (a sidecar that exits is restarted) until the pod stops us."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        signal.pause()

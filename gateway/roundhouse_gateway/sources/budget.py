"""The GPU budget at work in mode onDemand, as the admin page's Budget view shows it. Pure.

Who holds the GPUs and who waits, from the standalone gateway's own process manager or from the
EngineMode's status and this gateway's requests in a cluster; the last swaps (activations, drains
and stops with their reason and timings), newest first; and the GPUs each engine held over the last
hour, one point per change, so thrashing shows at a glance.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from roundhouse_api import OnDemandPolicy
from roundhouse_gateway.http.wire import iso_time

HISTORY_SECONDS = 3600.0
SWAPS_KEPT = 50
# The planner's own words for a swap's steps (roundhouse_api.ondemand), and the operator's Activated.
SWAP_REASONS = ("Activating", "Draining", "Stopped", "Activated", "Waiting")
HOLDING = ("running", "starting", "draining", "stopping")
SECONDS = re.compile(r"(?:ready|after draining) (\d+(?:\.\d+)?)s")


@dataclass(frozen=True)
class Holder:
    """One governed engine: its state, the GPUs it holds now, and the requests on it and waiting."""

    name: str
    family: str
    gpus: int  # what it holds when running
    state: str  # running | starting | draining | stopping | waiting | standby | failed
    in_flight: int = 0
    waiting: int = 0
    oldest_wait_at: float | None = None  # epoch seconds: the oldest request waiting for it
    since: float | None = None  # epoch seconds: when it entered this state (started, began draining)
    message: str = ""

    @property
    def held(self) -> int:
        return self.gpus if self.state in HOLDING else 0


@dataclass(frozen=True)
class Swap:
    """One step of a swap: an engine started, drained, stopped or became ready, and why."""

    at: float
    engine: str
    reason: str
    message: str
    seq: int = 0  # orders steps within one second (Events' timestamps have whole seconds)

    @property
    def seconds(self) -> float | None:
        """How long the step took, when its message says (Activated: ready after; Stopped: drained for)."""
        m = SECONDS.search(self.message)
        return float(m.group(1)) if m else None


@dataclass(frozen=True)
class BudgetState:
    gpus: int
    engines: tuple[Holder, ...]
    swaps: tuple[Swap, ...]  # any order: view() sorts them
    policy: OnDemandPolicy = field(default_factory=OnDemandPolicy)


class History:
    """GPUs held per engine over the last hour: a point whenever they change."""

    def __init__(self, keep: float = HISTORY_SECONDS) -> None:
        self.keep = keep
        self.points: deque[tuple[float, dict[str, int]]] = deque()

    def record(self, now: float, held: dict[str, int]) -> None:
        held = {k: v for k, v in held.items() if v}
        if self.points and self.points[-1][1] == held:
            return
        self.points.append((now, held))
        # The newest point before the window stays: it says what was held when the window opens.
        while len(self.points) > 1 and self.points[1][0] <= now - self.keep:
            self.points.popleft()

    def series(self, now: float) -> list[dict[str, Any]]:
        start = now - self.keep
        return [{"at": iso_time(max(t, start)), "held": held} for t, held in self.points]


def holders_view(h: Holder, now: float) -> dict[str, Any]:
    return {
        "name": h.name, "family": h.family, "gpus": h.gpus, "gpusHeld": h.held, "state": h.state,
        "inFlight": h.in_flight, "waiting": h.waiting,
        "oldestWaitSeconds": round(now - h.oldest_wait_at, 1) if h.oldest_wait_at is not None else None,
        "stateSeconds": round(now - h.since, 1) if h.since is not None else None, "message": h.message,
    }  # fmt: skip


def view(state: BudgetState | None, history: History, now: float, kept: int = 20) -> dict[str, Any]:
    """The admin API's /admin/budget: {"onDemand": false} when no budget is in force."""
    if state is None:
        return {"onDemand": False}
    p = state.policy
    swaps = sorted(state.swaps, key=lambda s: (s.at, s.seq), reverse=True)[:kept]
    settings = {"gpuBudget": p.gpu_budget, "minActiveSeconds": p.min_active_seconds, "idleSeconds": p.idle_seconds,
                "drainSeconds": p.drain_seconds, "maxWaitSeconds": p.max_wait_seconds}  # fmt: skip
    shown = [{"at": iso_time(s.at), "engine": s.engine, "reason": s.reason, "message": s.message,
              "seconds": s.seconds} for s in swaps]  # fmt: skip
    return {
        "onDemand": True,
        "gpuBudget": state.gpus,
        "gpusHeld": sum(h.held for h in state.engines),
        "settings": settings,
        "engines": [holders_view(h, now) for h in sorted(state.engines, key=lambda h: h.name)],
        "swaps": shown,
        "history": {"windowSeconds": history.keep, "points": history.series(now)},
    }

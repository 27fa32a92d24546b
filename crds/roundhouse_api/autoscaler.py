"""autoscale(policy, current, readings, now, since) -> the replicas an engine's load asks for. Pure.

The load is what the gateways report on the EngineMode (roundhouse_api.demand): per engine, the
requests in flight on it (running, or queued inside the engine) plus those a gateway holds for it, or
what the engine's replicas report holding themselves (their own metrics, scraped by the gateways) plus
those held, where that is higher: requests sent to the engine around the gateways count too.
Each gateway's latest report counts until it is REPORT_TTL old, so a dead gateway's last word stops
counting by itself. The recommendation at a moment is ceil(load / targetRequestsPerReplica) within
[max(1, minReplicas), maxReplicas] (zero is the on-demand planner's call, after idleSeconds). As in the
HPA's stabilization, a scale-up goes only as far as every recommendation of the last scaleUpSeconds
(a burst must last, noise does not scale), a scale-down only as far as the highest of the last
scaleDownSeconds (a lull must last). A window the operator has not watched whole (it just started)
holds that direction: it knows nothing of what came before.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .autoscaling import Autoscaling
from .demand import REPORT_TTL, GatewayReport

EPSILON = 1e-6


@dataclass(frozen=True)
class Reading:
    """One source's count for one engine at one moment (a gateway's report)."""

    source: str
    at: float
    running: int = 0  # in flight on the engine: running or queued inside it
    waiting: int = 0  # held by the gateway until a replica can take it
    engine: float | None = None  # what the engine's replicas say they hold, as this source last scraped them

    @property
    def load(self) -> int:
        return self.running + self.waiting


@dataclass(frozen=True)
class Scale:
    replicas: int
    load: int  # requests running and waiting now
    reason: str
    direction: str = ""  # "up", "down" or "" (unchanged)
    wake_in: float | None = None  # when the windows move on enough to change the answer without news
    need: int = 0  # what the load asks for now, before the windows: replicas beyond it are kept only by them


def readings(reports: Iterable[tuple[str, GatewayReport]], engine: str) -> list[Reading]:
    """One reading per gateway report (source, report): a report that does not name the engine says 0."""
    return [Reading(source, r.at, r.in_flight.get(engine, 0), r.queued.get(engine, 1 if engine in r.waiting else 0),
                    r.engine_load.get(engine)) for source, r in reports]  # fmt: skip


def load_at(series: Sequence[Reading], t: float) -> int:
    """The load at `t` from every source's latest reading (those older than REPORT_TTL left out): the sum
    of what the gateways have running and waiting, or, where the engines report their own count and it
    is higher (requests sent around the gateways), that count plus what the gateways hold waiting."""
    latest: dict[str, Reading] = {}
    for r in series:
        if r.at <= t and (r.source not in latest or r.at > latest[r.source].at):
            latest[r.source] = r
    fresh = [r for r in latest.values() if t - r.at <= REPORT_TTL]
    through = sum(r.load for r in fresh)
    held = [r.engine for r in fresh if r.engine is not None]
    if not held:
        return through
    # Every gateway scrapes the same replicas: their readings are one count, not one each. It holds the
    # gateways' requests on the engine too, so the higher of the two is the load, none counted twice.
    return max(through, math.ceil(max(held)) + sum(r.waiting for r in fresh))


def bounds(policy: Autoscaling) -> tuple[int, int]:
    low = max(1, policy.min_replicas)
    return low, max(low, policy.max_replicas)


def recommend(policy: Autoscaling, load: int) -> int:
    low, high = bounds(policy)
    return min(high, max(low, math.ceil(load / policy.target_requests_per_replica)))


def next_step(load: int, target: int) -> int:
    """The load at which the autoscaler asks for more replicas than `load` does (at least one replica's
    worth): a gateway whose load reaches it reports at once rather than at its next interval."""
    return max(1, math.ceil(load / target)) * target + 1


def _moments(series: Sequence[Reading], start: float, now: float) -> list[float]:
    """Where the load may change within [start, now]: the start, each reading and each expiry."""
    points = {start, now}
    for r in series:
        for t in (r.at, r.at + REPORT_TTL + EPSILON):
            if start < t <= now:
                points.add(t)
    return sorted(points)


def autoscale(policy: Autoscaling, current: int, series: Sequence[Reading], now: float, since: float) -> Scale:
    """Replicas for an engine that runs `current` (the autoscaler's last answer), given the readings and
    `since`, the moment the readings begin (the operator started watching)."""
    low, high = bounds(policy)
    target = policy.target_requests_per_replica
    load = load_at(series, now)
    need = recommend(policy, load)
    if current < low or current > high:
        to = min(high, max(low, current))
        return Scale(to, load, f"within minReplicas {low} and maxReplicas {high}", "up" if to > current else "down",
                     need=need)  # fmt: skip
    wake: list[float] = []
    up_w, down_w = policy.scale_up_seconds, policy.scale_down_seconds
    up = _stable(policy, series, now, since, up_w, False, wake)
    down = _stable(policy, series, now, since, down_w, True, wake)
    wake += [r.at + REPORT_TTL + EPSILON - now for r in series if r.at + REPORT_TTL + EPSILON > now]
    wake_in = min(wake) if wake else None
    per = load / max(current, 1)
    if up is not None and up > current:
        return Scale(up, load, f"{per:.3g} requests running and waiting per replica, target {target}"
                     + (f" (for {up_w}s)" if up_w else ""), "up", wake_in, need)  # fmt: skip
    if down is not None and down < current:
        at_most = f" (at most {down * target} for {down_w}s)" if down_w else ""
        return Scale(down, load, f"{per:.3g} requests running and waiting per replica, target {target}{at_most}",
                     "down", wake_in, need)  # fmt: skip
    why = f"{per:.3g} requests running and waiting per replica, target {target}"
    if need > current:
        why += f": scales up once it lasts {up_w}s"
    elif need < current:
        why += f": scales down once it lasts {down_w}s"
    return Scale(current, load, why, "", wake_in, need)


def _stable(policy: Autoscaling, series: Sequence[Reading], now: float, since: float, window: float,
            highest: bool, wake: list[float]) -> int | None:  # fmt: skip
    """The least the load asked for throughout the window (the up side: it asked at least that all along)
    or, `highest`, the most (the down side); None while the window reaches before what the operator saw."""
    start = now - window
    if window and start < since:
        wake.append(since - start)
        return None
    points = _moments(series, start, now)
    wake += [t + window - now for t in points if window and t + window > now]
    asked = [recommend(policy, load_at(series, t)) for t in points]
    return max(asked) if highest else min(asked)

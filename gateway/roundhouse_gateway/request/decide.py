"""Stage three, decide: which engines and replicas, in what order (routing.route, pure), waiting when
the answer is "not yet": for an engine started on demand (bounded, the stream kept alive meanwhile),
during a mode switch (bounded), or while every replica is at its concurrency cap (briefly)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

from roundhouse_gateway.engines.fleet import Fleet
from roundhouse_gateway.engines.probes import Prober
from roundhouse_gateway.engines.upstream import Upstream
from roundhouse_gateway.http.wire import ClientError
from roundhouse_gateway.routing import tokens
from roundhouse_gateway.routing.demand import Demand, Waiter
from roundhouse_gateway.routing.route import Decision, Features, route


class Decider:
    """Routes requests on the fleet's current view, and waits with them where routing says to."""

    def __init__(self, fleet: Fleet, demand: Demand, prober: Prober, upstream: Upstream) -> None:
        self.fleet, self.demand, self.prober, self.upstream = fleet, demand, prober, upstream
        self.turn = 0  # rotates the order among equally loaded endpoints

    async def counted(self, f: Features, body: dict[str, Any]) -> Features:
        """`f` with the prompt counted by an engine's own tokenizer where the estimate is too close to call."""
        fleet = self.fleet
        return await tokens.exact(f, body, fleet.catalog, fleet.health, self.upstream)

    async def decide(self, f: Features, waiting: Callable[[str], Awaitable[None]] | None = None) -> Decision:
        """Route; wait for an engine started on demand (bounded, `waiting` called meanwhile), hold while
        the mode switches (bounded), queue briefly when every endpoint is at its cap."""
        fleet = self.fleet
        policy = fleet.catalog.mode.policy
        hold_deadline = time.monotonic() + policy.max_hold_seconds
        queue_deadline = time.monotonic() + fleet.catalog.mode.rules.queue_timeout_seconds
        waiter: Waiter | None = None
        outcome = "gave-up"
        waited_for: set[str] = set()  # engines this request waits for: their starting replicas are probed
        try:
            while True:
                self.turn += 1
                d = route(f, fleet.catalog, fleet.health.healthy, fleet.load_of, self.turn, fleet.holds)
                if new := self.starting_for(d) - waited_for:
                    waited_for |= new
                    self.prober.wait_for(new, +1)
                if d.activate is not None:
                    if waiter is None or waiter.engine != d.activate:
                        if waiter is not None:
                            waiter.end("rerouted")
                        waiter = Waiter(self.demand, d.activate, fleet.catalog.mode.on_demand.max_wait_seconds)
                    if waiter.expired():
                        outcome = "timeout"
                        return waiter.timed_out(d.reason)
                    if waiting is not None:
                        await waiting(d.activate)
                    await fleet.wait_change(waiter.deadline)
                    continue
                outcome = "served" if d.candidates else "error"
                if waiter is not None and d.candidates:
                    # Say that this request waited for its engine to start (and how long).
                    waited = time.time() - waiter.started
                    d = dataclasses.replace(d, reason=f"{d.reason},activated:{waiter.engine}:{waited:.2f}s")
                if d.hold_for is not None:
                    if time.monotonic() >= hold_deadline:
                        why = f"the {d.hold_for.value} engines are still starting after a mode switch"
                        return Decision(error=(503, "engine_switching", why), reason="hold:timeout")
                    await fleet.wait_change(hold_deadline)
                    continue
                if d.candidates and all(fleet.at_cap(c.engine, c.endpoint) for c in d.candidates):
                    if time.monotonic() >= queue_deadline:
                        return Decision(error=(503, "engine_overloaded", "every engine for this model is at its"
                                               " concurrency limit"), reason="concurrency-cap")  # fmt: skip
                    fleet.slot_freed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(fleet.slot_freed.wait(), max(0.0, queue_deadline - time.monotonic()))
                    continue
                return d
        finally:
            if waiter is not None:
                waiter.end(outcome)
            self.prober.wait_for(waited_for, -1)

    def starting_for(self, d: Decision) -> set[str]:
        """The engines a held request waits for: the one it activates, or the switch's incoming family."""
        if d.activate is not None:
            return {d.activate}
        if d.hold_for is not None:
            return {e.name for e in self.fleet.catalog.engines if e.family == d.hold_for and e.starting}
        return set()


def refusal(d: Decision, rid: str, retry_after: int) -> ClientError:
    """The OpenAI-style error for a decision that nothing may serve the request. Pure."""
    assert d.error is not None
    status, code, message = d.error
    headers = {"X-Request-Id": rid, "X-Roundhouse-Route-Reason": d.reason or code}
    if status == 503:
        headers["Retry-After"] = str(d.retry_after or retry_after)
    param = "model" if code in ("model_not_found", "unsupported_endpoint") else None
    kind = "invalid_request_error" if status < 500 else "service_unavailable"
    return ClientError(status, message, code, param, kind, headers)

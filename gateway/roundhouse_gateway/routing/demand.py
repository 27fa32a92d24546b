"""Mode onDemand, the gateway's side: what its requests wait for and run on, reported to the operator.

The report (roundhouse_api.demand) is written when what the gateway waits for changes, when it has
seen an engine start to drain or its last request there ends, when its load on an autoscaled engine
grows past another replica's worth (its targetRequestsPerReplica) since the last report, and every
REPORT_INTERVAL while it has requests waiting or in flight: a bounded number of writes, whatever the
request rate.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping

from roundhouse_api.autoscaler import next_step
from roundhouse_api.demand import REPORT_INTERVAL, GatewayReport
from roundhouse_gateway import metrics
from roundhouse_gateway.engines.catalog import Catalog
from roundhouse_gateway.routing.route import Decision

log = logging.getLogger("roundhouse.gateway.demand")
Writer = Callable[[GatewayReport], Awaitable[None]]


class Demand:
    """Requests waiting for and running on each engine; writes the report through `write`."""

    def __init__(self, write: Writer | None = None, interval: float = REPORT_INTERVAL,
                 outstanding: Mapping[str, int] | None = None,
                 engine_held: Callable[[], dict[str, float]] | None = None) -> None:  # fmt: skip
        self.write = write
        self.interval = interval
        self.outstanding: Mapping[str, int] = outstanding if outstanding is not None else {}  # per endpoint
        # Autoscaled engines: what their replicas say they hold (their metrics), for the operator.
        self.engine_held = engine_held or dict
        self.reported_held: set[str] = set()  # engines the last report said hold requests
        self.stopping: dict[str, tuple[str, ...]] = {}  # engine -> its replicas a scale-down stops
        self.reported_stopping: set[str] = set()  # engines with requests on stopping replicas in the last report
        self.waiting: dict[str, list[float]] = {}  # engine -> start times of the requests waiting for it
        self.in_flight: Counter[str] = Counter()
        self.last_request: dict[str, float] = {}
        self.acked: set[str] = set()  # draining engines this gateway has reported on
        self.acked_switch: float | None = None  # the manual switch (its start) this gateway has reported on
        self.dirty = asyncio.Event()
        self.written_at = 0.0
        self.writes = 0
        self.reported_busy: set[str] = set()  # engines with requests in flight in the last report
        self.started_in: dict[str, float] = {}  # engine -> how long its last activation took, as waited here
        self.steps: dict[str, int] = {}  # autoscaled engine -> its targetRequestsPerReplica
        # Autoscaled engine -> the requests in flight here that ask for more replicas than the last report did.
        self.rise_at: dict[str, int] = {}

    # --- what the requests do (event loop, no I/O) -------------------------------------------------
    def wait_begin(self, engine: str) -> float:
        started = time.time()
        waits = self.waiting.setdefault(engine, [])
        if not waits:
            metrics.child(metrics.ACTIVATIONS, engine, "demand").inc()
            self.dirty.set()  # a new engine is wanted: say so now (once per activation)
        waits.append(started)
        metrics.child(metrics.WAITING, engine).inc()
        return started

    def wait_end(self, engine: str, started: float, outcome: str) -> None:
        waits = self.waiting.get(engine, [])
        if started in waits:
            waits.remove(started)
        if not waits:
            self.waiting.pop(engine, None)
            self.dirty.set()  # nobody waits any more: the demand is withdrawn
        metrics.child(metrics.WAITING, engine).dec()
        metrics.child(metrics.WAIT_SECONDS, outcome).observe(time.time() - started)

    def request_begin(self, engine: str) -> None:
        self.in_flight[engine] += 1
        self.last_request[engine] = time.time()
        if self.in_flight[engine] >= self.rise_at.get(engine, 1 << 62):
            del self.rise_at[engine]
            self.dirty.set()  # a burst: the operator hears of it now, not at the next interval

    def request_end(self, engine: str) -> None:
        self.in_flight[engine] -= 1
        if self.in_flight[engine] <= 0:
            del self.in_flight[engine]
            if engine in self.acked or engine in self.reported_busy:
                # The last request on an engine the last report called busy (or draining) ended: say so,
                # or it would look busy (not idle, not drained) until the report expires.
                self.dirty.set()
        if engine in self.reported_stopping and not self.on_stopping(engine):
            self.dirty.set()  # its stopping replicas' last request ended: the scale-down need not wait longer

    def on_stopping(self, engine: str) -> int:
        """Requests this gateway has in flight on the replicas of `engine` a scale-down stops."""
        return sum(self.outstanding.get(ep, 0) for ep in self.stopping.get(engine, ()))

    def catalog_changed(self, catalog: Catalog) -> None:
        """Acknowledge each engine that started to drain (with what is in flight on it): on demand, or
        switched off by a manual switch (the operator stops it early once every gateway has)."""
        mode = catalog.mode
        draining = {e.name for e in catalog.engines if e.phase == "Draining"
                    or (mode.switching and e.governed and e.endpoints and not mode.active(e))}  # fmt: skip
        # A switch the operator has taken up is answered once more: the operator ends its drain early
        # only on reports written after the switch began.
        switch = mode.switch_started_at if mode.switching else None
        if draining - self.acked or (switch is not None and switch != self.acked_switch):
            self.dirty.set()
        self.acked, self.acked_switch = draining, switch
        self.steps = {e.name: e.scale_step for e in catalog.engines if e.scale_step > 0}
        self.rise_at = {e: self.rise_at.get(e, next_step(0, step)) for e, step in self.steps.items()}
        stopping = {e.name: e.stopping for e in catalog.engines if e.stopping}
        if any(set(eps) - set(self.stopping.get(name, ())) for name, eps in stopping.items()):
            self.dirty.set()  # replicas newly stopped: say so (with what is in flight there) so the scale-down goes on
        self.stopping = stopping

    # --- reporting -----------------------------------------------------------------------------------
    def report(self) -> GatewayReport:
        stopping = {e: n for e in self.stopping if (n := self.on_stopping(e))}
        return GatewayReport(at=time.time(), waiting={e: min(t) for e, t in self.waiting.items() if t},
                             queued={e: len(t) for e, t in self.waiting.items() if t},
                             inFlight=dict(self.in_flight), lastRequest=dict(self.last_request),
                             stopping=stopping, engineLoad=self.engine_held())  # fmt: skip

    def busy(self) -> bool:
        """Whether the report is due every interval: requests here, or engines holding requests (sent
        around this gateway too) now or in the last report (so their going idle is said once)."""
        return bool(self.waiting or self.in_flight or self.reported_held
                    or any(v > 0 for v in self.engine_held().values()))  # fmt: skip

    async def run(self) -> None:
        """Write when something changed, and every interval while busy (last request times, freshness)."""
        if self.write is None:
            return
        while True:
            try:
                await asyncio.wait_for(self.dirty.wait(), self.interval)
            except TimeoutError:
                if not self.busy():
                    continue  # the operator keeps the last request times it was told
            self.dirty.clear()
            report = self.report()
            self.reported_busy, self.reported_stopping = set(report.in_flight), set(report.stopping)
            self.reported_held = {e for e, v in report.engine_load.items() if v > 0}
            self.rise_at = {e: next_step(report.in_flight.get(e, 0) + report.queued.get(e, 0), step)
                            for e, step in self.steps.items()}  # fmt: skip
            try:
                await self.write(report)
                self.written_at, self.writes = report.at, self.writes + 1
            except Exception as err:  # the API server may be away: the next change or interval retries
                log.warning("demand report not written", extra={"error": repr(err)})
                await asyncio.sleep(1.0)
                self.dirty.set()


class Waiter:
    """One request waiting for `engine` to start, for at most `max_wait` seconds."""

    def __init__(self, demand: Demand, engine: str, max_wait: float) -> None:
        self.demand, self.engine, self.max_wait = demand, engine, max_wait
        self.started = demand.wait_begin(engine)
        self.deadline = time.monotonic() + max_wait

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def timed_out(self, reason: str) -> Decision:
        """A 503 whose Retry-After is how long this engine took to start last time (if this gateway saw it)."""
        expected = self.demand.started_in.get(self.engine)
        message = (f"engine {self.engine} did not become ready within maxWaitSeconds ({self.max_wait:g}s);"
                   " it is still being started, try again")  # fmt: skip
        return Decision(error=(503, "engine_starting", message), reason=f"{reason},wait:timeout",
                        retry_after=max(1, math.ceil(expected)) if expected else None)  # fmt: skip

    def end(self, outcome: str) -> None:
        if outcome == "served":
            self.demand.started_in[self.engine] = time.time() - self.started
        self.demand.wait_end(self.engine, self.started, outcome)

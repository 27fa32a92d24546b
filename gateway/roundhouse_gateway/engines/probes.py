"""Active health probes: every replica every interval, judged the way its family means it; and, while
requests wait for an engine to start, its starting replicas every EARLY_PROBE_SECONDS (early.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from roundhouse_api.families import FAMILIES
from roundhouse_gateway import metrics
from roundhouse_gateway.engines.catalog import Engine, switch_finished
from roundhouse_gateway.engines.early import EARLY_PROBE_SECONDS, still_starting, to_probe
from roundhouse_gateway.engines.fleet import Fleet
from roundhouse_gateway.engines.health import probe_ok, probe_path
from roundhouse_gateway.engines.upstream import Upstream, UpstreamError

log = logging.getLogger("roundhouse.gateway")


class Prober:
    """Probes the fleet's replicas and writes what it learns into the fleet."""

    def __init__(self, fleet: Fleet, upstream: Upstream, interval: float, standalone: bool = True) -> None:
        self.fleet, self.upstream, self.interval = fleet, upstream, interval
        # Standalone, nothing reports a switch's end: the gateway ends it when the new family answers.
        self.standalone = standalone
        self.waiting_for: Counter[str] = Counter()  # requests waiting for each engine to start
        self._early: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        while True:
            await self.probe_all()
            await asyncio.sleep(self.interval)

    async def probe_all(self) -> None:
        fleet = self.fleet
        await asyncio.gather(*(self.probe(e, ep) for e in fleet.catalog.engines for ep in e.endpoints))
        if self.standalone_switch_done():
            fleet.update(switch_finished(fleet.catalog, time.time()))

    def standalone_switch_done(self) -> bool:
        mode = self.fleet.catalog.mode
        if not (self.standalone and mode.switching):
            return False
        incoming = [ep for e in self.fleet.catalog.engines if mode.active(e) and e.governed for ep in e.endpoints]
        return any(self.fleet.health.healthy(ep) for ep in incoming)

    async def check(self, engine: Engine, endpoint: str) -> tuple[bool, str]:
        """One active probe of `endpoint`, judged the way the engine's family means it."""
        headers = [("Authorization", f"Bearer {engine.api_key}")] if engine.api_key else []
        try:
            async with asyncio.timeout(engine.timeouts.connect + 2):
                r = await self.upstream.request("GET", endpoint, probe_path(engine), b"", headers,
                                                engine.timeouts.connect, engine.timeouts.connect + 2)  # fmt: skip
                try:
                    ok, why = probe_ok(engine, r.status, await r.read())
                finally:
                    r.release()
        except (UpstreamError, TimeoutError) as err:
            ok, why = False, f"unreachable: {type(err).__name__}"
        return ok, why

    async def adapters(self, engine: Engine, endpoint: str) -> None:
        """The adapters a replica has loaded at run time, from its /v1/models (kept as they were if it does
        not answer)."""
        headers = [("Authorization", f"Bearer {engine.api_key}")] if engine.api_key else []
        try:
            async with asyncio.timeout(engine.timeouts.connect + 2):
                r = await self.upstream.request("GET", endpoint, "/v1/models", b"", headers, engine.timeouts.connect,
                                                engine.timeouts.connect + 2)  # fmt: skip
                try:
                    body = await r.read()
                finally:
                    r.release()
        except (UpstreamError, TimeoutError):
            return
        if r.status == 200:
            loaded = frozenset(FAMILIES[engine.family].loaded_adapters(body))
            if loaded != self.fleet.loaded.get(endpoint):
                self.fleet.loaded[endpoint] = loaded
                log.info("replica adapters", extra={"engine": engine.name, "endpoint": endpoint,
                                                    "adapters": sorted(loaded)})  # fmt: skip
                self.fleet.notify()

    async def probe(self, engine: Engine, endpoint: str) -> None:
        ok, why = await self.check(engine, endpoint)
        if ok and engine.runtime_adapters:
            await self.adapters(engine, endpoint)
        health = self.fleet.health
        was = health.healthy(endpoint)
        health.probed(endpoint, ok, why)
        metrics.child(metrics.HEALTHY, engine.name, endpoint).set(1 if health.healthy(endpoint) else 0)
        if was != health.healthy(endpoint):
            log.info("endpoint health", extra={"engine": engine.name, "endpoint": endpoint, "healthy": ok, "why": why})
            self.fleet.notify()

    def wait_for(self, engines: set[str], delta: int) -> None:
        """A request starts (+1) or stops (-1) waiting for `engines`; while any waits, their starting
        replicas are probed every EARLY_PROBE_SECONDS and routed to once one answers."""
        if not engines:  # every routed request says so: nothing to count
            return
        for name in engines:
            self.waiting_for[name] += delta
            if self.waiting_for[name] > 0 and name not in self._early:
                self._early[name] = asyncio.create_task(self._probe_starting(name), name=f"early-{name}")
        self.waiting_for = +self.waiting_for  # drop the zeros

    async def _probe_starting(self, name: str) -> None:
        fleet = self.fleet
        try:
            while self.waiting_for[name] > 0:
                for engine, endpoint in to_probe(fleet.source, {name}, fleet.early):
                    ok, _ = await self.check(engine, endpoint)
                    if ok and still_starting(fleet.source, {endpoint}):  # it may have gone meanwhile
                        fleet.confirm_early(endpoint)
                        log.info("starting replica answers", extra={"engine": name, "endpoint": endpoint})
                await asyncio.sleep(EARLY_PROBE_SECONDS)
        finally:
            self._early.pop(name, None)

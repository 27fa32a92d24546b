"""Engine-reported load: the requests each replica says it holds (running and waiting, from every
gateway), scraped from its own metrics at a bounded interval. What a reading holds beyond this
gateway's own requests there at that moment is other clients' traffic; routing weighs a replica by
its own count now plus that. Its own requests are counted once, and only while they run: a reading
taken while they ran does not keep a replica looking busy for an interval after they end, which
would turn prefix affinity away from the replica holding the conversation's cache. A reading older
than STALE_INTERVALS intervals is ignored, never trusted: the gateway's own count is what remains."""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import Callable, Mapping

from roundhouse_api.families import FAMILIES
from roundhouse_gateway.engines.catalog import Catalog, Engine
from roundhouse_gateway.engines.upstream import Upstream, UpstreamError

STALE_INTERVALS = 3


def reported(text: str, names: tuple[str, ...]) -> float | None:
    """The sum of the named gauges in a Prometheus text exposition (None: none of them is there)."""
    total, seen = 0.0, False
    try:
        for match in _samples_of(names).finditer(text):
            total += float(match.group(1))
            seen = True
    except ValueError:
        return None
    return total if seen else None


@functools.lru_cache(maxsize=64)
def _samples_of(names: tuple[str, ...]) -> re.Pattern[str]:
    """The sample lines of `names` (with or without labels), capturing the value. Only those lines are
    read: a real engine's exposition runs to hundreds of histogram lines, and prometheus_client's parser
    took milliseconds over them every interval, on the loop that serves requests."""
    alternatives = "|".join(re.escape(n) for n in names)
    return re.compile(rf"^(?:{alternatives})(?:\{{[^\n]*\}})?[ \t]+(\S+)", re.MULTILINE)


class EngineLoad:
    """The requests of other clients each endpoint last reported, with when."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.readings: dict[str, tuple[float, float]] = {}  # endpoint -> (others' requests, monotonic time)
        self.held: dict[str, tuple[float, float]] = {}  # endpoint -> (all it holds, monotonic time)

    def others(self, endpoint: str) -> float:
        """The requests the endpoint last said it holds beyond this gateway's own (0: unknown or stale)."""
        reading = self.readings.get(endpoint)
        if reading is None or time.monotonic() - reading[1] > STALE_INTERVALS * self.interval:
            return 0.0
        return reading[0]

    def record(self, endpoint: str, held: float, own: int) -> None:
        """A reading of `held` requests, taken while this gateway had up to `own` of its own there."""
        now = time.monotonic()
        self.readings[endpoint] = (max(0.0, held - own), now)
        self.held[endpoint] = (held, now)

    def held_by(self, endpoints: tuple[str, ...]) -> float | None:
        """What the replicas at `endpoints` last said they hold in all, fresh readings only (None: none)."""
        fresh = [h for ep in endpoints if (h := self.held.get(ep)) is not None
                 and time.monotonic() - h[1] <= STALE_INTERVALS * self.interval]  # fmt: skip
        return sum(h[0] for h in fresh) if fresh else None

    async def scrape(self, upstream: Upstream, engine: Engine, endpoint: str, own: Mapping[str, int]) -> None:
        family = FAMILIES[engine.family]
        if not family.load_metrics or family.metrics_path is None:
            return
        before = own.get(endpoint, 0)  # the engine's figure is from somewhere between the request and the answer
        try:
            async with asyncio.timeout(self.interval):
                resp = await upstream.request("GET", endpoint, family.metrics_path, b"", [], self.interval,
                                              self.interval)  # fmt: skip
                try:
                    body = await resp.read() if resp.status == 200 else b""
                finally:
                    resp.release()
        except (UpstreamError, TimeoutError):
            return  # no reading: the last one goes stale
        value = reported(body.decode(errors="replace"), family.load_metrics)
        if value is not None:
            self.record(endpoint, value, max(before, own.get(endpoint, 0)))

    async def run(self, catalog: Callable[[], Catalog], upstream: Upstream, own: Mapping[str, int]) -> None:
        """Scrape every endpoint each interval while the mode's rules use engine load; `own` is this
        gateway's count of requests outstanding at an endpoint."""
        while True:
            cat = catalog()
            # Where there is a choice to make or a cap to keep (when the mode's rules use engine load), and
            # for autoscaled engines, whose load the demand report carries.
            rules = cat.mode.rules.engine_load
            wanted = [e for e in cat.engines if e.autoscaled
                      or (rules and (len(e.endpoints) > 1 or e.max_concurrency is not None))]  # fmt: skip
            await asyncio.gather(*(self.scrape(upstream, e, ep, own) for e in wanted for ep in e.endpoints))
            current = {p for e in cat.engines for p in e.endpoints}
            for ep in [ep for ep in self.readings if ep not in current]:
                del self.readings[ep]
                self.held.pop(ep, None)
            await asyncio.sleep(self.interval)

"""The engines as this gateway sees them now: the catalog it routes on, each replica's health, its
requests in flight and the load its engine reports, recent figures per engine, and the events that
wake requests waiting for any of it to change. The request stages read it; the sources and probes
write it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from roundhouse_gateway.engines.catalog import Catalog, Engine
from roundhouse_gateway.engines.early import still_starting, with_early
from roundhouse_gateway.engines.health import Health
from roundhouse_gateway.engines.load import EngineLoad


@dataclass
class EngineStats:
    """An engine's recent times to first token and completion tokens, for the admin page."""

    ttft: deque[float] = field(default_factory=lambda: deque(maxlen=200))
    tokens: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=500))

    def ttft_p50(self) -> float | None:
        return sorted(self.ttft)[len(self.ttft) // 2] if self.ttft else None

    def tokens_per_second(self, window: float = 60.0) -> float:
        now = time.monotonic()
        return round(sum(n for t, n in self.tokens if now - t <= window) / window, 3)


class Fleet:
    """The live view of the engines that routing and forwarding share."""

    def __init__(self, catalog: Catalog | None = None) -> None:
        self.source = catalog or Catalog()  # as the config or the cluster says
        self.catalog = self.source  # what requests are routed on: the source plus early replicas
        self.early: set[str] = set()  # starting replicas that answered the gateway's probe (early.py)
        self.synced = catalog is not None
        self.health = Health()
        self.outstanding: dict[str, int] = defaultdict(int)
        self.stats: dict[str, EngineStats] = defaultdict(EngineStats)
        self.engine_load = EngineLoad()
        self.changed = asyncio.Event()
        self.slot_freed = asyncio.Event()
        self.on_update: list[Callable[[Catalog], None]] = []
        # Adapters loaded at run time (vLLM): what each replica's /v1/models last listed, read by the probes.
        self.loaded: dict[str, frozenset[str]] = {}

    def update(self, catalog: Catalog) -> None:
        """A new catalog from the config file or the cluster watchers."""
        self.source = catalog
        self.early = still_starting(catalog, self.early)
        self.catalog = with_early(catalog, self.early)
        self.synced = True
        current = {ep for e in catalog.engines for ep in e.endpoints}
        self.health.forget_except(current)
        self.loaded = {ep: names for ep, names in self.loaded.items() if ep in current}
        for hook in self.on_update:
            hook(catalog)
        self.notify()

    def confirm_early(self, endpoint: str) -> None:
        """A starting replica answered the gateway's own probe: route to it now."""
        self.early.add(endpoint)
        self.catalog = with_early(self.source, self.early)
        self.health.probed(endpoint, True)
        self.notify()

    def notify(self) -> None:
        """Wake requests waiting for the catalog or health to change (held during a switch)."""
        self.changed.set()
        self.changed = asyncio.Event()

    async def wait_change(self, deadline: float) -> None:
        """Until the catalog or health changes, a second at most, or `deadline` (monotonic)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.changed.wait(), min(1.0, max(0.0, deadline - time.monotonic())))

    def load_of(self, endpoint: str) -> float:
        """What routing weighs an endpoint by: this gateway's requests there, plus those of other clients
        the engine last reported (fresh readings only, when the mode's rules use them)."""
        if self.catalog.mode.rules.engine_load:
            return self.outstanding[endpoint] + self.engine_load.others(endpoint)
        return self.outstanding[endpoint]

    def engine_held(self) -> dict[str, float]:
        """Per autoscaled engine, the requests its replicas last said they hold (fresh readings only)."""
        load = self.engine_load
        return {e.name: v for e in self.source.engines if e.autoscaled and (v := load.held_by(e.endpoints)) is not None}

    def holds(self, engine: Engine, endpoint: str, model: str) -> bool:
        """Whether the replica at `endpoint` serves `model`: its base names always; an adapter loaded at run
        time once the replica lists it (a replica that lacks it is never chosen for it)."""
        if not engine.runtime_adapters or model not in engine.adapter:
            return True
        return model in self.loaded.get(endpoint, frozenset())

    def at_cap(self, engine: Engine, endpoint: str) -> bool:
        return engine.max_concurrency is not None and self.outstanding[endpoint] >= engine.max_concurrency

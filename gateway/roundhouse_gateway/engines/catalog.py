"""The gateway's view of engines and the mode: plain, immutable data built from the API types."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from roundhouse_api import (
    AutoRules,
    Capability,
    EngineMode,
    Family,
    InferenceEngine,
    Mode,
    ModePhase,
    OnDemandPolicy,
    Phase,
    SwitchPolicy,
    runs,
)
from roundhouse_api.families import FAMILIES, adapter_routes
from roundhouse_api.families.base import AdapterRoute


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0
    first_byte: float = 120.0
    idle: float = 60.0


@dataclass(frozen=True)
class Engine:
    """One engine as the router sees it."""

    name: str
    family: Family
    served: frozenset[str]
    endpoints: tuple[str, ...]  # base URLs without /v1, one per replica
    upstream_model: str  # the "model" the engine itself expects
    ready: bool = True
    governed: bool = True
    priority: int = 0
    weight: int = 100
    weighted: bool = False  # routing.weight was set: its arms split users by weight (routing/split.py)
    max_concurrency: int | None = None
    capabilities: frozenset[str] = frozenset()
    context_length: int | None = None
    task_types: frozenset[str] = frozenset()
    fallback: tuple[str, ...] = ()
    timeouts: Timeouts = Timeouts()
    api_key: str | None = None  # external APIs: sent upstream as Bearer
    phase: str | None = None  # as the operator reports it (None standalone)
    message: str | None = None  # why it is in that phase, in words
    starting: tuple[str, ...] = ()  # replicas whose pods start (not ready yet, not terminating): early.py
    stopping: tuple[str, ...] = ()  # replicas a scale-down stops (status.stopping): never routed to
    autoscaled: bool = False  # spec.autoscaling: the gateway reports what its replicas say they hold
    # spec.autoscaling's targetRequestsPerReplica: the gateway reports at once when its load on the engine
    # grows past another replica's worth, not only every REPORT_INTERVAL (a burst is seen in seconds).
    scale_step: int = 0
    shadow_of: str | None = None  # the served name whose requests this engine gets a copy of (routing.shadow)
    shadow_percent: float = 0.0
    shadow_max: int = 4  # copies in flight at most
    # LoRA adapters (spec.adapters), by the name clients ask for; each is in `served` too.
    adapters: tuple[AdapterRoute, ...] = ()
    base: str = ""  # spec.model.servedName: an adapter's parent in /v1/models
    runtime_adapters: bool = False  # loaded on running replicas: a replica serves one once its /v1/models lists it

    @functools.cached_property
    def adapter(self) -> dict[str, AdapterRoute]:
        """The adapters by name."""
        return {a.name: a for a in self.adapters}


@dataclass(frozen=True)
class ModeState:
    mode: Mode | None = None
    switching: bool = False
    policy: SwitchPolicy = field(default_factory=SwitchPolicy)
    rules: AutoRules = field(default_factory=AutoRules)
    on_demand: OnDemandPolicy = field(default_factory=OnDemandPolicy)
    # What the EngineMode's status says (or, standalone, what the gateway itself observed); shown
    # by the admin API and the web page, never used for routing.
    phase: str | None = None
    previous: Mode | None = None
    switch_started_at: float | None = None  # epoch seconds
    last_switch_seconds: float | None = None
    message: str | None = None
    source: str | None = None  # "namespace/name" of the EngineMode

    def active(self, engine: Engine) -> bool:
        return not engine.governed or runs(self.mode, engine.family)


@dataclass(frozen=True)
class Catalog:
    engines: tuple[Engine, ...] = ()
    mode: ModeState = ModeState()

    def by_name(self, name: str) -> Engine | None:
        return next((e for e in self.engines if e.name == name), None)

    @functools.cached_property
    def serving(self) -> dict[str, tuple[Engine, ...]]:
        """Per served name, the engines serving it, in catalog order (routed on every request)."""
        by_name: dict[str, list[Engine]] = {}
        for e in self.engines:
            for n in e.served:
                by_name.setdefault(n, []).append(e)
        return {n: tuple(es) for n, es in by_name.items()}

    @functools.cached_property
    def contexts(self) -> dict[str, frozenset[int]]:
        """Per served name, the context sizes its engines declare."""
        return {n: frozenset(e.context_length for e in es if e.context_length) for n, es in self.serving.items()}

    @functools.cached_property
    def served(self) -> frozenset[str]:
        """Every name any engine serves (active or not): what a metric's model label may be."""
        return frozenset(n for e in self.engines for n in e.served)

    @functools.cached_property
    def compared(self) -> frozenset[str]:
        """Names whose answers are compared: served by two engines or more (A/B arms), or shadowed."""
        count: dict[str, int] = {}
        for e in self.engines:
            for n in e.served:
                count[n] = count.get(n, 0) + 1
        shadowed = {e.shadow_of for e in self.engines if e.shadow_of}
        # A shadow names the model by a served name or an alias: every name of the engines serving it counts.
        names = {n for e in self.engines if e.served & shadowed for n in e.served}
        return frozenset(n for n, c in count.items() if c > 1) | names

    def models(self) -> list[str]:
        """Served names and aliases of active engines."""
        return sorted({n for e in self.engines if self.mode.active(e) for n in e.served})


def engine_from_resource(
    ie: InferenceEngine,
    endpoints: list[str] | None = None,
    api_key: str | None = None,
    governed: bool = True,
    starting: list[str] | None = None,
) -> Engine:
    """An Engine from an InferenceEngine; `endpoints` (base URLs) override spec.endpoints/status;
    `governed`: whether the EngineMode's selector picks it (an ungoverned engine always runs)."""
    spec = ie.spec
    routing = spec.routing
    family = FAMILIES[spec.engine]
    if spec.engine == Family.EXTERNAL and spec.external:
        base = spec.external.base_url.rstrip("/")
        urls = [base[: -len("/v1")] if base.endswith("/v1") else base]
    else:
        urls = [u.rstrip("/") for u in (endpoints if endpoints is not None else (spec.endpoints or []))]
    upstream = family.upstream_model(spec)
    context = routing.context_length if routing and routing.context_length else None
    if context is None:
        context = family.context_per_request(spec)
    t = routing.timeouts if routing and routing.timeouts else None
    status = ie.status
    # Degraded means some replicas are ready: those still serve (the endpoints say which).
    ready = True if status is None or status.phase is None else status.phase in (Phase.READY, Phase.DEGRADED)
    adapters = tuple(adapter_routes(spec).values())
    # Replicas a scale-down stops are out of routing from the moment the operator lists them.
    gone = {r.address for r in status.stopping if r.address} if status else set()
    stopping = tuple(u for u in urls if urlsplit(u).hostname in gone)
    urls = [u for u in urls if u not in stopping]
    starting = [u for u in starting or () if urlsplit(u.rstrip("/")).hostname not in gone]
    return Engine(
        name=ie.metadata.name,
        family=spec.engine,
        served=frozenset([spec.model.served_name, *spec.model.aliases, *(a.name for a in adapters)]),
        adapters=adapters,
        base=spec.model.served_name,
        runtime_adapters=bool(adapters) and family.runtime_adapters(spec),
        endpoints=tuple(urls),
        starting=tuple(u.rstrip("/") for u in starting),
        stopping=stopping,
        autoscaled=spec.autoscaling is not None,
        scale_step=spec.autoscaling.target_requests_per_replica if spec.autoscaling else 0,
        upstream_model=upstream,
        ready=ready,
        governed=governed,
        priority=routing.priority if routing else 0,
        weight=routing.weight if routing else 100,
        weighted=routing is not None and "weight" in routing.model_fields_set,
        max_concurrency=routing.max_concurrency if routing else None,
        capabilities=frozenset(c.value for c in (routing.capabilities if routing else [])),
        context_length=context,
        task_types=frozenset(routing.task_types if routing else []),
        fallback=tuple(routing.fallback if routing else []),
        timeouts=Timeouts(t.connect_seconds, t.first_byte_seconds, t.idle_seconds) if t else Timeouts(),
        api_key=api_key,
        phase=status.phase.value if status and status.phase else None,
        message=status.message if status else None,
        shadow_of=routing.shadow.of if routing and routing.shadow else None,
        shadow_percent=routing.shadow.percent if routing and routing.shadow else 0.0,
        shadow_max=routing.shadow.max_in_flight if routing and routing.shadow else 4,
    )


def mode_from_resource(em: EngineMode | None) -> ModeState:
    if em is None:
        return ModeState()
    status = em.status
    switching = bool(status and status.phase == ModePhase.SWITCHING)
    started = status.switch_started_at if status else None
    ns = em.metadata.namespace
    phase = status.phase.value if status and status.phase else None
    previous = status.previous_mode if status else None
    if status and status.active_mode is not None and status.active_mode != em.spec.mode and not switching:
        # Patched, and the operator has not taken it up yet: a switch is on its way all the same, and
        # requests for the incoming family are held by the policy from now on, not refused.
        switching = True
        phase, previous, started = ModePhase.SWITCHING.value, status.active_mode, None
    return ModeState(
        mode=em.spec.mode,
        switching=switching,
        policy=em.spec.switch_policy or SwitchPolicy(),
        rules=em.spec.auto_rules or AutoRules(),
        on_demand=em.spec.on_demand or OnDemandPolicy(),
        phase=phase,
        previous=previous,
        switch_started_at=started.timestamp() if started else None,
        last_switch_seconds=status.last_switch_seconds if status else None,
        message=status.message if status else None,
        source=f"{ns}/{em.metadata.name}" if ns else em.metadata.name,
    )


def with_mode(catalog: Catalog, mode: Mode, now: float) -> Catalog:
    """The catalog under another mode, Switching until the gateway sees the new family healthy.
    Asking for the mode already in force changes nothing."""
    current = catalog.mode
    if mode == current.mode:
        return catalog
    return dataclasses.replace(catalog, mode=dataclasses.replace(
        current, mode=mode, switching=True, phase="Switching", previous=current.mode, switch_started_at=now,
        message=f"switching from {current.mode.value if current.mode else 'nothing'} to {mode.value}"))  # fmt: skip


def switch_finished(catalog: Catalog, now: float) -> Catalog:
    """The catalog once the incoming family answers: Ready, with how long the switch took."""
    m = catalog.mode
    took = round(now - m.switch_started_at, 3) if m.switch_started_at is not None else None
    what = m.mode.value if m.mode else "nothing"
    return dataclasses.replace(catalog, mode=dataclasses.replace(
        m, switching=False, phase="Ready", last_switch_seconds=took,
        message=f"now {what} (from {m.previous.value if m.previous else 'nothing'}) in {took}s"))  # fmt: skip


CAPABILITY_TOOLS = Capability.TOOLS.value
CAPABILITY_JSON_SCHEMA = Capability.JSON_SCHEMA.value

"""plan_on_demand(engines, policy, now) -> which governed engines hold the GPUs in mode onDemand. Pure.

Requests start the engines they need (the gateways report what their held requests wait for); the
planner keeps the engines within the GPU budget: an engine that is needed starts once enough GPUs
are free, and others make room: idle ones first (nothing in flight), then the least recently used,
then the lowest routing priority. An engine being stopped first drains: it gets no new requests
and those running finish, until every gateway says none is left or drainSeconds pass; then it is
scaled to zero, and its GPUs count as free only once its pods have stopped. An engine started on
demand runs at least minActiveSeconds (no thrashing), and one with no request for idleSeconds is
scaled to zero. Engines with spec.autoscaling share the budget replica by replica: a model with
requests waiting gets its first replica before any model gets another (extra replicas are taken
back before a whole engine is evicted), then free GPUs go to the engine whose queue per replica is
longest. Everything the planner remembers (activation and drain times) is in the
EngineMode's status, so an operator restarted in the middle of a swap finishes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .demand import REPORT_INTERVAL
from .mode import OnDemandPolicy

State = Literal["active", "standby", "waiting", "starting", "draining", "stopping"]


@dataclass(frozen=True)
class DemandView:
    """One governed engine as the on-demand planner sees it (times in epoch seconds)."""

    name: str
    gpus: int  # GPUs it holds when running at its spec's replicas
    spec_replicas: int
    deployed: int  # its Deployment's replicas now
    pods: int  # its pods that hold their GPUs now: terminating ones until they reach a terminal phase
    ready: bool = False
    priority: int = 0
    activated_at: float | None = None  # when it last started (or was first seen running)
    draining_since: float | None = None
    demanded_at: float | None = None  # the oldest request a gateway holds for it
    last_request_at: float | None = None
    in_flight: int = 0  # requests on it, as the fresh gateway reports say
    drained: bool = False  # every gateway that has seen the drain reports nothing in flight
    # spec.autoscaling: GPUs per replica (0: not autoscaled; `gpus` is then all it ever holds), the
    # replicas the autoscaler wants, and the requests running and waiting (whose queue is longest).
    # `spec_replicas` is then the replicas it starts with, and `gpus` what they hold.
    unit: int = 0
    want: int = 0
    load: int = 0
    # What the load asks for now, before the autoscaler's windows (None: not known). Replicas beyond it
    # are kept only by the scale-down window, and give way to an engine whose load needs more.
    need: int | None = None


@dataclass(frozen=True)
class Budget:
    gpus: int
    min_active: float = 60
    idle: float = 0  # 0: never scale an idle engine to zero
    drain: float = 30

    @classmethod
    def of(cls, policy: OnDemandPolicy | None, default_gpus: int) -> Budget:
        """spec.onDemand as the planner reads it; the GPU budget defaults to `default_gpus`."""
        p = policy or OnDemandPolicy()
        gpus = p.gpu_budget if p.gpu_budget is not None else default_gpus
        return cls(gpus=gpus, min_active=p.min_active_seconds, idle=p.idle_seconds, drain=p.drain_seconds)


@dataclass(frozen=True)
class Decision:
    replicas: int
    state: State
    note: str
    activated_at: float | None = None
    draining_since: float | None = None


@dataclass(frozen=True)
class PlanEvent:
    engine: str
    reason: str  # Activating, Draining, Stopped, OverBudget, WaitingForGPUs
    message: str


@dataclass
class DemandPlan:
    engines: dict[str, Decision] = field(default_factory=dict)
    events: list[PlanEvent] = field(default_factory=list)
    wake_in: float | None = None  # seconds until a deadline passes that this plan depends on
    gpus_held: int = 0

    def wake(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.wake_in = seconds if self.wake_in is None else min(self.wake_in, seconds)


def holds(e: DemandView) -> int:
    """GPUs the engine holds now: until its last pod is gone (an autoscaled one: per replica or pod)."""
    if e.deployed <= 0 and e.pods <= 0:
        return 0
    return max(e.deployed, e.pods) * e.unit if e.unit else e.gpus


def plan_on_demand(engines: list[DemandView], budget: Budget, now: float) -> DemandPlan:
    """Desired replicas and state for every governed engine; events for what changes."""
    out = DemandPlan(gpus_held=sum(holds(e) for e in engines))
    running = {e.name: e for e in engines if e.deployed > 0 and e.draining_since is None}
    for e in engines:
        if e.draining_since is not None:
            _drain(e, budget, now, out)
    for e in list(running.values()):
        if (why := _idle(e, budget, now, out)) is not None:
            del running[e.name]
            _start_drain(e, now, why, out)
    free = budget.gpus - out.gpus_held  # may be negative while over budget
    # Drains and stopping pods, and the replicas of running engines being stopped.
    freeing = sum(holds(e) for e in engines if e.name not in running) + sum(map(_stopping, running.values()))
    trimmed: dict[str, int] = {}  # autoscaled engines giving extra replicas back: replicas they keep
    for e in sorted((e for e in engines if e.demanded_at is not None and e.name not in running
                     and e.name not in out.engines), key=lambda e: (e.demanded_at, e.name)):  # fmt: skip
        if e.gpus > budget.gpus:
            out.engines[e.name] = Decision(0, "waiting", f"needs {e.gpus} GPUs, more than the budget of {budget.gpus}")
            continue
        if e.gpus <= free:
            free -= e.gpus
            waited = now - (e.demanded_at or now)
            out.engines[e.name] = Decision(e.spec_replicas, "starting", "started by a request", activated_at=now)
            out.events.append(
                PlanEvent(
                    e.name,
                    "Activating",
                    f"a request waits for {e.name}: starting it"
                    f" ({e.gpus} of {budget.gpus} GPUs; demanded {waited:.1f}s ago)",
                )
            )
            continue
        shortfall = e.gpus - max(free, 0) - freeing
        if shortfall > 0 and (taken := _trim(list(running.values()), shortfall, trimmed, e.name, out)):
            freeing += taken
            shortfall -= taken
        if shortfall > 0:
            victims, blocked = _victims(list(running.values()), shortfall, budget, now)
            if not victims:
                if blocked:
                    out.wake(min(_min_active_left(b, budget, now) for b in blocked))
                why = (f"{', '.join(b.name for b in blocked)} started less than minActiveSeconds ago" if blocked
                       else "the engines holding them are in use by other waiting requests")  # fmt: skip
                out.engines[e.name] = Decision(0, "waiting", f"waiting for GPUs: needs {e.gpus},"
                                               f" {max(free, 0)} free; {why}")  # fmt: skip
                continue
            for v in victims:
                del running[v.name]
                freeing += holds(v) - _stopping(v) - _trimmed_gpus(v, trimmed)
                _start_drain(v, now, f"making room for {e.name}", out)
        # The GPUs being freed are this engine's: it starts once the outgoing pods are gone.
        from_freeing = e.gpus - max(free, 0)
        free, freeing = min(free, 0), freeing - from_freeing
        others = sorted(x.name for x in engines if ((x.name not in running and holds(x)) or _stopping(x))
                        and x.name != e.name)  # fmt: skip
        what = ", ".join(others) if others else "its own old pods"
        out.engines[e.name] = Decision(0, "waiting", f"waiting for {what} to stop (GPUs to free up)")
    _over_budget(running, budget, now, out, trimmed)
    shares = _share(engines, running, budget, out, trimmed)
    for e in engines:
        if e.name in out.engines:
            continue
        if e.name in running:
            activated = e.activated_at if e.activated_at is not None else now  # adopted as it runs
            state: State = "active" if e.ready else "starting"
            replicas, note = shares.get(e.name, (e.spec_replicas, ""))
            note = note or ("serving" if e.ready else "starting")
            out.engines[e.name] = Decision(replicas, state, note, activated_at=activated)
            continue
        if e.pods:
            out.engines[e.name] = Decision(0, "stopping", f"{e.pods} pod(s) stopping")
        else:
            out.engines[e.name] = Decision(0, "standby", "on demand: starts when a request needs it")
    return out


def _drain(e: DemandView, budget: Budget, now: float, out: DemandPlan) -> None:
    deadline = e.draining_since + budget.drain if e.draining_since is not None else now
    if e.drained or now >= deadline:
        why = "nothing left in flight" if e.drained else f"drainSeconds ({budget.drain:g}s) passed"
        took = now - (e.draining_since or now)
        out.engines[e.name] = Decision(0, "stopping" if e.pods else "standby", f"stopped: {why}")
        out.events.append(PlanEvent(e.name, "Stopped", f"scaled {e.name} to zero after draining {took:.1f}s: {why}"))
        return
    out.wake(deadline - now)
    out.engines[e.name] = Decision(
        e.deployed,
        "draining",
        f"draining: {e.in_flight} request(s) in flight, stopped after {budget.drain:g}s at most",
        draining_since=e.draining_since,
    )


def _start_drain(e: DemandView, now: float, why: str, out: DemandPlan) -> None:
    out.engines[e.name] = Decision(e.deployed, "draining", f"draining: {why}", draining_since=now)
    out.events.append(PlanEvent(e.name, "Draining", f"draining {e.name} ({why}): no new requests,"
                                f" {e.in_flight} in flight may finish"))  # fmt: skip
    out.wake(0.05)


def _idle(e: DemandView, budget: Budget, now: float, out: DemandPlan) -> str | None:
    """Why a running engine is scaled to zero for idleness now (None: not yet; the wake-up is set)."""
    if not budget.idle or e.demanded_at is not None:
        return None
    if e.in_flight:
        out.wake(REPORT_INTERVAL)  # busy now; look again when the next report is due
        return None
    since = max((t for t in (e.last_request_at, e.activated_at) if t is not None), default=now)
    due = max(since + budget.idle, (e.activated_at or now) + budget.min_active)
    if now < due:
        out.wake(due - now)
        return None
    return f"no request for {now - since:.0f}s (idleSeconds {budget.idle:g})"


def _min_active_left(e: DemandView, budget: Budget, now: float) -> float:
    return (e.activated_at or now) + budget.min_active - now


def _victims(running: list[DemandView], shortfall: int, budget: Budget,
             now: float) -> tuple[list[DemandView], list[DemandView]]:  # fmt: skip
    """Engines to stop to free `shortfall` GPUs: idle first, least recently used, lowest priority.
    Returns ([], the engines minActiveSeconds protects) when not enough may stop now."""
    eligible = [e for e in running if e.demanded_at is None and _min_active_left(e, budget, now) <= 0]
    blocked = [e for e in running if e.demanded_at is None and _min_active_left(e, budget, now) > 0]
    eligible.sort(key=lambda e: (e.in_flight > 0, e.last_request_at or 0.0, e.priority, e.name))
    picked, freed = [], 0
    for e in eligible:
        if freed >= shortfall:
            break
        if holds(e):
            picked.append(e)
            freed += holds(e)
    return (picked, blocked) if freed >= shortfall else ([], blocked)


def _over_budget(running: dict[str, DemandView], budget: Budget, now: float, out: DemandPlan,
                 trimmed: dict[str, int]) -> None:  # fmt: skip
    """Engines already running beyond the budget (it was lowered, or the mode just became onDemand):
    extra replicas go first, then whole engines."""
    total = sum(holds(e) - _stopping(e) - _trimmed_gpus(e, trimmed) for e in running.values())
    if total <= budget.gpus:
        return
    total -= _trim(list(running.values()), total - budget.gpus, trimmed, None, out)
    if total <= budget.gpus:
        return
    victims, blocked = _victims(list(running.values()), total - budget.gpus, budget, now)
    if not victims and blocked:
        out.wake(min(_min_active_left(b, budget, now) for b in blocked))
    for v in victims:
        del running[v.name]
        _start_drain(v, now, f"over the GPU budget of {budget.gpus}", out)


def _stopping(e: DemandView) -> int:
    """GPUs of an autoscaled engine's pods beyond its replicas: being stopped, soon free."""
    return max(0, e.pods - e.deployed) * e.unit


def _trimmed_gpus(e: DemandView, trimmed: dict[str, int]) -> int:
    """GPUs an autoscaled engine gives back this pass (they count as freeing, not held)."""
    return (e.deployed - trimmed[e.name]) * e.unit if e.name in trimmed else 0


def _trim(running: list[DemandView], shortfall: int, trimmed: dict[str, int], for_whom: str | None,
          out: DemandPlan) -> int:  # fmt: skip
    """Take extra replicas back (never an engine's first ones), shortest queue per replica first, until
    `shortfall` GPUs are freed or none is left; the GPUs freed. Nothing when they would not be enough
    (a whole engine must go then, and taking replicas from others too would only cost them)."""
    keep = {e.name: trimmed.get(e.name, e.deployed) for e in running if e.unit}
    spare = sum((keep[e.name] - e.spec_replicas) * e.unit for e in running if e.unit and keep[e.name] > e.spec_replicas)
    if spare < shortfall:
        return 0
    freed, now_trimmed = 0, set()
    while freed < shortfall:
        e = min((e for e in running if e.unit and keep[e.name] > e.spec_replicas),
                key=lambda e: (e.load / keep[e.name], -keep[e.name], e.name))  # fmt: skip
        keep[e.name] -= 1
        trimmed[e.name] = keep[e.name]
        now_trimmed.add(e.name)
        freed += e.unit
    for name in sorted(now_trimmed):
        why = f"the GPU budget ({for_whom} waits for its first replica)" if for_whom else "over the GPU budget"
        out.events.append(PlanEvent(name, "ScalingDown", f"{name} gives extra replicas back to {trimmed[name]}: {why}"))
    return freed


def _share(engines: list[DemandView], running: dict[str, DemandView], budget: Budget, out: DemandPlan,
           trimmed: dict[str, int]) -> dict[str, tuple[int, str]]:  # fmt: skip
    """Replicas and a note for each running autoscaled engine. Each keeps what it holds up to what it
    wants (at least its first replicas); free GPUs then go one replica at a time to the longest queue
    per replica, but none while a model waits for its first replica."""
    scaled = [e for e in running.values() if e.unit]
    if not scaled:
        return {}
    alloc = {e.name: trimmed.get(e.name, max(e.spec_replicas, min(e.want, e.deployed))) for e in scaled}
    committed = 0
    for e in engines:
        d = out.engines.get(e.name)
        planned = alloc[e.name] * e.unit if e.name in alloc else e.gpus if d is not None and d.replicas else 0
        committed += max(holds(e), planned)
    free = budget.gpus - committed
    waiting = any(d.state == "waiting" and "more than the budget" not in d.note for d in out.engines.values())
    grow = [e for e in scaled if alloc[e.name] < _wants(e) and e.name not in trimmed]
    yielded: dict[str, str] = {}  # engines giving replicas kept only by their window -> to whom
    while grow and not waiting:
        e = max(grow, key=lambda e: (e.load / alloc[e.name], -alloc[e.name], e.name))
        cost = e.unit if (alloc[e.name] + 1) * e.unit > holds(e) else 0
        if cost > free:
            grow.remove(e)
            missing = (_wants(e) - alloc[e.name]) * e.unit - max(free, 0)
            for name in _yield(scaled, e, alloc, missing, trimmed):
                yielded[name] = e.name
            grow = [g for g in grow if g.name not in yielded]  # what it gave is not to be taken again
            continue
        alloc[e.name] += 1
        free -= cost
        if alloc[e.name] >= _wants(e):
            grow.remove(e)
    out_notes = {}
    for e in scaled:
        got, want = alloc[e.name], max(e.want, e.spec_replicas)
        if e.name in yielded:
            note = (f"{got} of {want} replicas: the load needs {e.need} now; the rest given back to"
                    f" {yielded[e.name]}, whose load needs more (GPU budget {budget.gpus})")  # fmt: skip
        elif e.name in trimmed:
            note = f"{got} of {want} replicas: extra ones given back for the GPU budget"
        elif got < want:
            note = (f"{got} of {want} replicas: waiting for " + ("a model to get its first replica" if waiting
                    else f"GPUs (budget {budget.gpus})"))  # fmt: skip
        else:
            note = f"{got} replica(s), as the load asks"
        out_notes[e.name] = (got, note)
    for name, to in yielded.items():
        out.events.append(PlanEvent(name, "ScalingDown", f"{name} gives replicas back to {alloc[name]}: its load"
                                    f" needs fewer now, and {to}'s needs more within the GPU budget"))  # fmt: skip
    return out_notes


def _wants(e: DemandView) -> int:
    """Replicas an engine grows to: what the autoscaler wants, but none the load does not need now."""
    return e.want if e.need is None else min(e.want, max(e.need, e.spec_replicas))


def _yield(scaled: list[DemandView], to: DemandView, alloc: dict[str, int], gpus: int,
           trimmed: dict[str, int]) -> list[str]:  # fmt: skip
    """Take replicas that only the scale-down window keeps (beyond what each engine's load needs now),
    fewest requests per replica first, until `gpus` are freed for `to` or none is left; who gave."""
    gave: list[str] = []
    while gpus > 0:
        spare = [d for d in scaled if d.name != to.name and d.need is not None and d.name not in trimmed
                 and alloc[d.name] > max(d.need, d.spec_replicas, 1)]  # fmt: skip
        if not spare:
            break
        d = min(spare, key=lambda d: (d.load / alloc[d.name], -alloc[d.name], d.name))
        alloc[d.name] -= 1
        gpus -= d.unit
        if d.name not in gave:
            gave.append(d.name)
    return gave

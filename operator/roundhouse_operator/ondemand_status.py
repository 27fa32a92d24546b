"""The on-demand planner's inputs from observed objects, and its EngineMode status and events. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from roundhouse_api import EngineMode, EngineModeStatus, EngineStatus, Family, InferenceEngine, Mode, ModePhase
from roundhouse_api.autoscaler import Scale, bounds
from roundhouse_api.demand import EngineDemand, GatewayReport, drained
from roundhouse_api.families.base import gpu_count
from roundhouse_api.mode import GovernedEngine
from roundhouse_api.ondemand import Budget, DemandPlan, DemandView

from . import timeline
from .switch import ModeEvent, set_conditions

STEADY = ("active", "standby")


@dataclass(frozen=True)
class Seen:
    """One governed engine's objects, as the operator's store holds them."""

    name: str
    engine: InferenceEngine
    deployment: dict[str, Any] | None
    pods: int


def epoch(t: datetime | None) -> float | None:
    return t.timestamp() if t is not None else None


def when(t: float | None) -> datetime | None:
    return datetime.fromtimestamp(t, UTC) if t is not None else None


def budget_of(mode: EngineMode, nodes: list[dict[str, Any]]) -> Budget:
    """spec.onDemand, with the GPU budget defaulting to every GPU the nodes advertise."""
    return Budget.of(mode.spec.on_demand, sum(_int((n.get("allocatable") or {}).get("nvidia.com/gpu")) for n in nodes))


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def views(mode: EngineMode, seen: list[Seen], demand: dict[str, EngineDemand], reports: list[GatewayReport],
          scales: dict[str, Scale] | None = None) -> list[DemandView]:  # fmt: skip
    """Planner inputs: observed replicas and pods, the gateways' demand, what the last pass recorded, and
    for an engine with spec.autoscaling the autoscaler's answer (it starts with max(1, minReplicas))."""
    previous = {e.name: e for e in (mode.status.engines if mode.status else [])}
    out = []
    for s in seen:
        spec = s.engine.spec
        dstatus = (s.deployment or {}).get("status") or {}
        deployed = int(((s.deployment or {}).get("spec") or {}).get("replicas", 0) or 0)
        prev = previous.get(s.name)
        d = demand.get(s.name, EngineDemand())
        draining_since = epoch(prev.draining_since) if prev else None
        lasts = [t for t in (d.last_request_at, epoch(prev.last_request_at) if prev else None) if t is not None]
        scale = (scales or {}).get(s.name)
        base = bounds(spec.autoscaling)[0] if scale and spec.autoscaling else spec.replicas
        out.append(DemandView(
            name=s.name, gpus=base * gpu_count(spec), spec_replicas=base, deployed=deployed,
            pods=s.pods, ready=deployed > 0 and int(dstatus.get("readyReplicas", 0) or 0) >= base,
            unit=gpu_count(spec) if scale else 0, want=scale.replicas if scale else 0, load=scale.load if scale else 0,
            need=scale.need if scale else None,
            priority=spec.routing.priority if spec.routing else 0,
            activated_at=epoch(prev.activated_at) if prev else None, draining_since=draining_since,
            demanded_at=d.demanded_at, last_request_at=max(lasts) if lasts else None, in_flight=d.in_flight,
            drained=draining_since is not None and drained(reports, s.name, draining_since),
        ))  # fmt: skip
    return out


def on_demand_status(mode: EngineMode, p: DemandPlan, budget: Budget, seen: list[DemandView],
                     engines: dict[str, tuple[Family, EngineStatus, bool]], now: datetime,
                     pod_times: dict[str, dict[str, float]] | None = None,
                     ) -> tuple[EngineModeStatus, list[ModeEvent]]:  # fmt: skip
    """The EngineMode status in mode onDemand: each engine's state and times, the budget, and events.
    `pod_times`: when each engine's newest pod reached each milestone (the Activated event's timeline)."""
    prev = mode.status or EngineModeStatus()
    before = {e.name: e for e in prev.engines}
    by_name = {v.name: v for v in seen}
    events = [ModeEvent("Normal", e.reason, e.message) for e in p.events]
    governed: list[GovernedEngine] = []
    busy: list[str] = []
    stuck: list[str] = []
    activations = prev.activations or 0
    for name, (family, st, _workload) in sorted(engines.items()):
        d = p.engines.get(name)
        v = by_name.get(name)
        if d is None or v is None:  # runs elsewhere (an external API): always on
            governed.append(GovernedEngine(name=name, family=family, active=True, phase=st.phase, message=st.message))
            continue
        activations += any(e.engine == name and e.reason == "Activating" for e in p.events)
        old = before.get(name)
        if old is not None and old.state == "starting" and d.state == "active" and old.activated_at is not None:
            took = (now - old.activated_at).total_seconds()
            phases = tuple(timeline.activation(epoch(old.demanded_at), epoch(old.activated_at),
                                               (pod_times or {}).get(name, {})))  # fmt: skip
            why = f"{name} is ready {took:.1f}s after it was started" + (f": {timeline.describe(list(phases))}"
                                                                        if phases else "")  # fmt: skip
            events.append(ModeEvent("Normal", "Activated", why, took, phases))
        # The request that started it is kept until it runs: the gateway may be answered (and stop
        # reporting the wait) before the operator sees the pod Ready.
        demanded = v.demanded_at
        if demanded is None and d.state == "starting" and old is not None and old.state == "starting":
            demanded = epoch(old.demanded_at)
        if d.state == "waiting" and (old is None or old.state != "waiting"):
            events.append(ModeEvent("Normal" if "to stop" in d.note else "Warning", "Waiting", f"{name}: {d.note}"))
        if d.state not in STEADY:
            (stuck if "more than the budget" in d.note else busy).append(f"{name}: {d.note}")
        governed.append(GovernedEngine(
            name=name, family=family, active=d.replicas > 0, phase=st.phase, message=d.note, state=d.state,
            demanded_at=when(demanded), activated_at=when(d.activated_at), draining_since=when(d.draining_since),
            last_request_at=when(v.last_request_at),
        ))  # fmt: skip
    status = EngineModeStatus(
        active_mode=Mode.ON_DEMAND, previous_mode=prev.previous_mode if prev.active_mode == Mode.ON_DEMAND
        else prev.active_mode, switch_started_at=prev.switch_started_at, switch_completed_at=prev.switch_completed_at,
        last_switch_seconds=prev.last_switch_seconds, engines=governed, observed_generation=mode.metadata.generation,
        gpu_budget=budget.gpus, gpus_held=p.gpus_held, activations=activations,
    )  # fmt: skip
    if stuck:
        status.phase, status.message = ModePhase.DEGRADED, "; ".join(stuck + busy)
    elif busy:
        status.phase, status.message = ModePhase.SWITCHING, "; ".join(busy)
    else:
        status.phase = ModePhase.READY
        status.message = f"onDemand: {p.gpus_held} of {budget.gpus} GPUs held; every engine is active or on standby"
    set_conditions(status, prev, mode.metadata.generation, now, "Activating", "no activation under way")
    return status, events

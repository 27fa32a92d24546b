"""plan(mode, engines) -> desired replicas per engine and the switch's state. Pure.

Switching is exclusive: two families may not fit on the same GPUs, so an engine the mode
switches on is held at zero replicas until every pod of the engines it switches off has stopped
(gone, or in a terminal phase). The plan is computed from observed state only (which pods hold
GPUs now), so an operator that restarts in the middle of a switch finishes it correctly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from roundhouse_api import Family, Mode, runs


@dataclass(frozen=True)
class EngineView:
    """What the planner needs to know about one engine."""

    name: str
    family: Family
    spec_replicas: int
    deployed_replicas: int  # the Deployment's spec.replicas now (0 if none)
    pods: int  # pods that hold their GPUs now: terminating ones until they reach a terminal phase
    runs_workload: bool = True
    governed: bool = True


@dataclass(frozen=True)
class EnginePlan:
    replicas: int
    active: bool
    held: bool  # wanted, but waiting for the outgoing family's pods to go
    state: str | None = None  # mode onDemand: the planner's state for it (ondemand.State)
    note: str = ""  # mode onDemand: why, in words


@dataclass
class ModePlan:
    engines: dict[str, EnginePlan] = field(default_factory=dict)
    outgoing_pods: int = 0

    @property
    def switching(self) -> bool:
        return any(p.held for p in self.engines.values()) or self.outgoing_pods > 0


wanted = runs


def plan(mode: Mode | None, engines: list[EngineView], draining: bool = False) -> ModePlan:
    """Desired replicas for every engine under `mode`. While `draining`, engines being switched off
    keep their replicas so requests already in flight can finish."""
    result = ModePlan()
    outgoing = [e for e in engines if e.governed and e.runs_workload and not wanted(mode, e.family)]
    result.outgoing_pods = sum(e.pods for e in outgoing)
    for e in engines:
        active = not e.governed or wanted(mode, e.family)
        if not active:
            result.engines[e.name] = EnginePlan(
                replicas=e.deployed_replicas if draining else 0, active=False, held=False
            )
            continue
        # An engine already running keeps running; one that would start waits for GPUs to free up.
        starting = e.deployed_replicas == 0 and e.spec_replicas > 0 and e.runs_workload
        held = starting and result.outgoing_pods > 0
        result.engines[e.name] = EnginePlan(replicas=0 if held else e.spec_replicas, active=True, held=held)
    return result

"""A scale-down that drains first (N→M, M ≥ 1). The replicas it stops are listed on status.stopping, so
every gateway takes them out of its routing, and marked with a low pod-deletion-cost, so the ReplicaSet
deletes those and no other. The Deployment goes down only once every gateway has reported since, with
nothing in flight on them, or at the drain deadline: requests running there finish. Pure.

A stop to zero is the on-demand plan's (the whole engine drains), and a scale-up calls a drain off."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from roundhouse_api import EngineMode, StoppingReplica
from roundhouse_api.demand import GatewayReport, stopping_drained

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
STOP_FIRST = "-2147483648"  # the lowest an int32 takes: the ReplicaSet deletes these pods before any other


@dataclass(frozen=True)
class Step:
    """What this pass does about a scale-down."""

    replicas: int  # for the Deployment now
    stopping: list[StoppingReplica] = field(default_factory=list)  # for status.stopping
    mark: list[str] = field(default_factory=list)  # pods to give the lowest deletion cost
    unmark: list[str] = field(default_factory=list)  # pods a called-off scale-down no longer stops
    wake_in: float | None = None  # seconds until the drain deadline: a pass is due then


def drain_seconds(mode: EngineMode | None) -> float:
    """How long requests on a stopping replica may run: the mode's drain for on-demand stops, else its switch's."""
    if mode is not None and mode.spec.on_demand is not None:
        return float(mode.spec.on_demand.drain_seconds)
    if mode is not None and mode.spec.switch_policy is not None:
        return float(mode.spec.switch_policy.drain_seconds)
    return 30.0


def step(
    engine: str,
    target: int,
    deployed: int,
    pods: list[dict[str, Any]],
    previous: list[StoppingReplica],
    reports: list[GatewayReport],
    now: datetime,
    drain: float,
) -> Step:
    """The replicas to apply for a plan of `target` with `deployed` on the Deployment; `pods`: the engine's
    pods still running (not terminal); `previous`: status.stopping as the last pass wrote it."""
    running = {p["metadata"]["name"]: p for p in pods if not p["metadata"].get("deletionTimestamp")}
    if target <= 0:
        return Step(target)
    if len(running) <= target:  # every running pod is wanted: nothing to stop, or a scale-down called off
        return Step(target, unmark=[s.pod for s in previous if s.pod in running and marked(running[s.pod])])
    if deployed <= target:  # gone down already: out of routing until the ReplicaSet has deleted them
        return Step(target, [s for s in previous if s.pod in running])
    need = min(deployed, len(running)) - target
    # The pods already marked are the ones stopping even when the status listing them was not written
    # yet (or lost): the mark is what the ReplicaSet goes by, so the choice never moves to another pod.
    listed = [s for s in previous if s.pod in running]
    listed += [StoppingReplica(pod=n, since=now) for n, p in sorted(running.items(), key=lambda np: stop_order(np[1]))
               if marked(p) and n not in {s.pod for s in listed}]  # fmt: skip
    kept = listed[:need]
    dropped = [s.pod for s in listed[need:] if marked(running[s.pod])]
    chosen = {s.pod for s in kept}
    for pod in sorted((p for n, p in running.items() if n not in chosen), key=stop_order)[: need - len(kept)]:
        kept.append(StoppingReplica(pod=pod["metadata"]["name"], since=now))
    stopping = [s.model_copy(update={"address": address(running[s.pod])}) for s in kept]
    since = max(s.since for s in stopping)
    deadline = since + timedelta(seconds=drain)
    mark = [s.pod for s in stopping if not marked(running[s.pod])]
    # Down early only once the pods it stops carry the mark as the API server has them (else the ReplicaSet
    # would choose by its own order); at the deadline whatever happens (a mark refused must not hold it).
    if now >= deadline or (not mark and stopping_drained(reports, engine, since.timestamp())):
        return Step(target, stopping, mark, dropped)
    return Step(deployed, stopping, mark, dropped, (deadline - now).total_seconds())


def stop_order(pod: dict[str, Any]) -> tuple[bool, str, str]:
    """Pods not ready first (they serve nothing yet), then the newest (a replica the load asked for last)."""
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in (pod.get("status") or {}).get("conditions") or [])  # fmt: skip
    created = pod["metadata"].get("creationTimestamp") or ""
    return ready, _descending(created), pod["metadata"]["name"]


def _descending(text: str) -> str:
    return "".join(chr(0x10FFFF - ord(c)) for c in text)


def marked(pod: dict[str, Any]) -> bool:
    return (pod["metadata"].get("annotations") or {}).get(DELETION_COST) == STOP_FIRST


def address(pod: dict[str, Any]) -> str:
    return str((pod.get("status") or {}).get("podIP") or "")

"""spec.autoscaling, the operator's side: the gateways' reports kept as a time series, the autoscaler's
answer per engine, and what status and events say about it.

The reports are the annotations the gateways write on the EngineModes of the namespace (one per
gateway, rewritten every REPORT_INTERVAL while busy): each version seen is one reading. They are kept
in memory for the longest stabilization window; an operator that restarts starts a new series, and
the autoscaler holds a direction until it has watched that direction's window whole.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from kubernetes.client.exceptions import ApiException

from roundhouse_api import EngineMode, EngineStatus, InferenceEngine, ScalingStatus, StoppingReplica
from roundhouse_api.autoscaler import Scale, autoscale, readings
from roundhouse_api.demand import REPORT_TTL, GatewayReport, fold, readable

from . import stopping
from .kube import Kube
from .render import runs_workload
from .store import Store, holds_devices

log = logging.getLogger("roundhouse.operator")


class History:
    """Every gateway report seen per namespace, for as long as a window may look back."""

    def __init__(self) -> None:
        self.reports: dict[str, dict[tuple[str, float], GatewayReport]] = {}
        self.since: dict[str, float] = {}
        self.ordered: dict[str, list[tuple[str, GatewayReport]]] = {}  # by time, once per pass

    def see(self, namespace: str, annotations: list[dict[str, str]], now: float, horizon: float) -> None:
        kept = self.reports.setdefault(namespace, {})
        self.since.setdefault(namespace, now)
        for notes in annotations:
            for key, report in readable(notes):
                kept.setdefault((key, report.at), report)
        oldest = now - horizon - REPORT_TTL
        for k in [k for k, r in kept.items() if r.at < oldest]:
            del kept[k]
        self.ordered[namespace] = sorted(((k[0], r) for k, r in kept.items()), key=lambda kr: kr[1].at)

    def decide(self, namespace: str, engine: InferenceEngine, current: int, now: float) -> Scale:
        policy = engine.spec.autoscaling
        assert policy is not None
        series = readings(self.ordered.get(namespace, []), engine.metadata.name)
        return autoscale(policy, current, series, now, self.since.get(namespace, now))

    def forget(self, namespace: str) -> None:
        self.reports.pop(namespace, None)
        self.since.pop(namespace, None)
        self.ordered.pop(namespace, None)


def horizon(engines: list[InferenceEngine]) -> float:
    """How far back the namespace's longest stabilization window looks."""
    return max((max(p.scale_up_seconds, p.scale_down_seconds) for e in engines
                if (p := e.spec.autoscaling) is not None), default=0.0)  # fmt: skip


def current(engine: InferenceEngine, previous: EngineStatus | None, deployed: int) -> int:
    """What the autoscaler answered last (kept on status, so a restart goes on from it)."""
    if previous is not None and previous.scaling is not None:
        return previous.scaling.wanted_replicas
    return deployed or engine.spec.replicas


@dataclass(frozen=True)
class ScalingEvent:
    reason: str  # ScaledUp or ScaledDown
    message: str


def scaling_status(scale: Scale, desired: int, note: str, previous: EngineStatus | None,
                   now: datetime) -> tuple[ScalingStatus, ScalingEvent | None]:  # fmt: skip
    """status.scaling (what the load asks for, what the plan gave, why) and the event for a change of a
    running engine's replicas (starts and stops from and to zero have the on-demand events)."""
    before = previous.desired_replicas if previous is not None else None
    old = previous.scaling if previous is not None else None
    reason = scale.reason if desired >= scale.replicas or not note else f"{scale.reason}; {note}"
    changed = before is not None and before != desired
    status = ScalingStatus(
        wanted_replicas=scale.replicas, desired_replicas=desired, load=scale.load, reason=reason,
        last_scale_time=now if changed or old is None else old.last_scale_time,
    )  # fmt: skip
    if not changed or not before or not desired:
        return status, None
    word = "ScaledUp" if desired > before else "ScaledDown"
    return status, ScalingEvent(word, f"{before}→{desired}: {reason}")


class Autoscaling:
    """The Controller's autoscaling half: the answers it keeps are the Controller's."""

    store: Store
    kube: Kube
    history: History
    _scales: dict[tuple[str, str], Scale]
    _stopping: dict[tuple[str, str], list[StoppingReplica]]

    if TYPE_CHECKING:

        def mark_later(self, namespace: str, seconds: float) -> None: ...

        def _previous_status(self, raw: dict[str, Any]) -> EngineStatus | None: ...

    def _autoscale(
        self, namespace: str, modes: list[EngineMode],
        parsed: dict[str, tuple[dict[str, Any], InferenceEngine | None, str | None]], now: datetime,
    ) -> None:  # fmt: skip
        """The autoscaler's answer for every engine with spec.autoscaling, from the gateways' reports on the
        namespace's EngineModes; a pass is due again when its windows move on."""
        scaled = [e for (_r, e, err) in parsed.values() if e is not None and err is None and e.spec.autoscaling
                  and runs_workload(e)]  # fmt: skip
        for key in [k for k in self._scales if k[0] == namespace and k[1] not in {e.metadata.name for e in scaled}]:
            del self._scales[key]
        if not scaled:
            self.history.forget(namespace)
            return
        t = now.timestamp()
        self.history.see(namespace, [m.metadata.annotations for m in modes], t, horizon(scaled))
        for e in scaled:
            name = e.metadata.name
            deployment = self.store.get("Deployment", namespace, name)
            deployed = int(((deployment or {}).get("spec") or {}).get("replicas", 0) or 0)
            last = self._scales.get((namespace, name))
            was = last.replicas if last else current(e, self._previous_status(parsed[name][0]), deployed)
            scale = self._scales[(namespace, name)] = self.history.decide(namespace, e, was, t)
            if scale.wake_in is not None:
                self.mark_later(namespace, scale.wake_in + 0.05)

    async def _stop_replicas(self, raw: dict[str, Any], target: int, mode: EngineMode | None,
                             previous: EngineStatus | None, now: datetime) -> stopping.Step:  # fmt: skip
        """A scale-down's step this pass (stopping.py): the pods it stops marked (and an event naming them),
        or unmarked when it is called off; a pass is due at the drain deadline."""
        namespace, name = raw["metadata"]["namespace"], raw["metadata"]["name"]
        deployment = self.store.get("Deployment", namespace, name)
        deployed = int(((deployment or {}).get("spec") or {}).get("replicas", 0) or 0)
        pods = [p for p in self.store.owned("Pod", namespace, name) if holds_devices(p)]
        # What this process chose last, else what the status says: a pass may start before the last
        # one's status write and pod marks are back through the watch, and must not choose again.
        listed = self._stopping.get((namespace, name)) or (previous.stopping if previous else [])
        if len(pods) <= target and not listed:
            return stopping.Step(target)  # the usual pass: nothing to stop, nothing listed (no reports read)
        reports = fold(mode.metadata.annotations, now.timestamp())[1] if mode is not None else []
        step = stopping.step(name, target, deployed, pods, listed, reports, now, stopping.drain_seconds(mode))
        if step.stopping:
            self._stopping[(namespace, name)] = step.stopping
        else:
            self._stopping.pop((namespace, name), None)
        for pod, cost in [*((n, stopping.STOP_FIRST) for n in step.mark), *((n, None) for n in step.unmark)]:
            try:
                await asyncio.to_thread(self.kube.annotate_pod, namespace, pod, {stopping.DELETION_COST: cost})
            except ApiException as err:  # gone meanwhile, or refused: the next pass looks again
                log.warning("pod not marked", extra={"namespace": namespace, "pod": pod, "status": err.status})
        if step.wake_in is not None:
            self.mark_later(namespace, step.wake_in + 0.05)
        before = {s.pod for s in listed}
        if new := [s.pod for s in step.stopping if s.pod not in before]:  # chosen this pass: announced once
            message = (f"{deployed}→{target}: {', '.join(new)} out of routing; stopped once the gateways report its"
                       f" requests done ({stopping.drain_seconds(mode):g}s at most)")  # fmt: skip
            await asyncio.to_thread(self.kube.event, raw, "Normal", "StoppingReplicas", message)
        return step

"""mode_status(...) -> the EngineMode's status and the events a switch produces. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from roundhouse_api import EngineMode, EngineModeStatus, EngineStatus, Family, ModePhase, Phase
from roundhouse_api.demand import GatewayReport, switch_drained
from roundhouse_api.mode import GovernedEngine

from . import timeline
from .plan import ModePlan
from .status import condition, keep_transition_times


@dataclass(frozen=True)
class ModeEvent:
    type: str
    reason: str
    message: str
    seconds: float | None = None  # how long the step took, for the metrics
    phases: tuple[tuple[str, float], ...] = ()  # an activation's timeline (timeline.py), for the metrics


def drain_deadline(mode: EngineMode, now: datetime) -> datetime | None:
    """Until when engines being switched off keep serving in-flight requests (None: no switch)."""
    drain = timedelta(seconds=mode.spec.switch_policy.drain_seconds if mode.spec.switch_policy else 30)
    if switch_starting(mode):
        return now + drain
    status = mode.status
    if not status or status.phase != ModePhase.SWITCHING or not status.switch_started_at:
        return None
    return status.switch_started_at + drain


def drain_over(mode: EngineMode, outgoing: list[str], reports: list[GatewayReport]) -> bool:
    """Whether this switch may stop its `outgoing` engines before its drain deadline: the status holds
    this switch's start (before the operator takes it up, it holds the last one's), and every gateway
    has reported since then with nothing in flight on them."""
    status = mode.status
    if status is None or switch_starting(mode) or status.phase != ModePhase.SWITCHING or not outgoing:
        return False
    return status.switch_started_at is not None and switch_drained(
        reports, outgoing, status.switch_started_at.timestamp()
    )


def switch_starting(mode: EngineMode) -> bool:
    status = mode.status
    return status is None or (status.active_mode != mode.spec.mode and status.phase != ModePhase.SWITCHING)


def mode_status(
    mode: EngineMode,
    p: ModePlan,
    engines: dict[str, tuple[Family, EngineStatus, bool]],
    now: datetime,
    pod_times: dict[str, dict[str, float]] | None = None,
) -> tuple[EngineModeStatus, list[ModeEvent]]:
    """The EngineMode status after this reconcile, from observed state only.

    `engines` maps each governed engine to (family, status, runs a workload here); engines that
    run elsewhere are listed but do not hold a switch up. `pod_times`: when each engine's newest pod
    reached each milestone (the SwitchCompleted event's timeline)."""
    prev = mode.status or EngineModeStatus()
    target = mode.spec.mode
    events: list[ModeEvent] = []
    started_at, previous = prev.switch_started_at, prev.previous_mode
    if switch_starting(mode):
        started_at, previous = now, prev.active_mode
        events.append(
            ModeEvent("Normal", "SwitchStarted", f"switching from {prev.active_mode or 'nothing'} to {target}")
        )
    governed = []
    not_ready, unschedulable = [], []
    for name, (family, st, workload) in sorted(engines.items()):
        ep = p.engines[name]
        governed.append(GovernedEngine(name=name, family=family, active=ep.active, phase=st.phase, message=st.message))
        if workload and ep.active and st.phase not in (Phase.READY, Phase.STANDBY):
            not_ready.append(name)
            sched = next((c for c in st.conditions if c.type == "Scheduled"), None)
            if sched is not None and sched.status == "False":
                unschedulable.append(f"{name}: {sched.message}")
    complete = p.outgoing_pods == 0 and not not_ready
    in_switch = prev.phase == ModePhase.SWITCHING or switch_starting(mode)
    status = EngineModeStatus(
        previous_mode=previous,
        switch_started_at=started_at,
        switch_completed_at=prev.switch_completed_at,
        last_switch_seconds=prev.last_switch_seconds,
        engines=governed,
        observed_generation=mode.metadata.generation,
    )
    if complete:
        status.phase, status.active_mode = ModePhase.READY, target
        status.message = f"{target}: every governed engine is where the mode wants it"
        if in_switch and started_at is not None:
            status.switch_completed_at = now
            status.last_switch_seconds = round((now - started_at).total_seconds(), 3)
            took = f"now {target} (from {previous or 'nothing'}) in {status.last_switch_seconds}s"
            phases = switch_timeline(started_at, p, engines, pod_times or {})
            if phases:
                took += f": {timeline.describe(list(phases[1]))} ({phases[0]}, the last to start)"
            events.append(ModeEvent("Normal", "SwitchCompleted", took, status.last_switch_seconds,
                                    phases[1] if phases else ()))  # fmt: skip
    elif unschedulable and not p.switching:
        status.phase, status.active_mode = ModePhase.DEGRADED, target
        status.message = "cannot fit every engine: " + "; ".join(unschedulable)
    elif in_switch:
        status.phase, status.active_mode = ModePhase.SWITCHING, prev.active_mode
        waiting = (
            f"{p.outgoing_pods} outgoing pod(s) stopping" if p.outgoing_pods else "waiting for " + ", ".join(not_ready)
        )
        status.message = f"switching to {target}: {waiting}"
    else:
        status.phase, status.active_mode = ModePhase.DEGRADED, target
        status.message = "not ready: " + ", ".join(not_ready)
    set_conditions(status, prev, mode.metadata.generation, now, "Switching", "no switch under way")
    return status, events


def set_conditions(status: EngineModeStatus, prev: EngineModeStatus, gen: int | None, now: datetime, busy: str,
                   idle: str) -> None:  # fmt: skip
    """The mode's Ready and Switching conditions from its phase (`busy`: the Switching reason while
    it is under way; `idle`: the message when it is not), keeping unchanged transition times."""
    assert status.phase is not None and status.message is not None
    switching = status.phase == ModePhase.SWITCHING
    conditions = [
        condition("Ready", status.phase == ModePhase.READY, status.phase.value, status.message, gen or 0, now),
        condition("Switching", switching, busy if switching else "Idle", status.message if switching else idle,
                  gen or 0, now),
    ]  # fmt: skip
    status.conditions = keep_transition_times(conditions, prev.conditions)


def switch_timeline(
    started: datetime,
    p: ModePlan,
    engines: dict[str, tuple[Family, EngineStatus, bool]],
    pod_times: dict[str, dict[str, float]],
) -> tuple[str, tuple[tuple[str, float], ...]] | None:
    """The incoming engine Ready last, and its timeline from the switch's start: the outgoing pods
    drained and gone (until its pod was created), then its pod's milestones."""
    incoming = [(t["ready"], n, t) for n, t in pod_times.items()
                if n in p.engines and p.engines[n].active and engines.get(n, (None, None, False))[2] and "ready" in t
                and t.get("created", 0) >= started.timestamp()]  # fmt: skip
    if not incoming:
        return None
    _, name, times = max(incoming)
    phases = timeline.activation(started.timestamp(), None, times)
    return name, tuple(("drain-and-gone" if ph == "created" else ph, s) for ph, s in phases)

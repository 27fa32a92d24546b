"""plan_on_demand(): budget, eviction order, minActiveSeconds, idleSeconds, drain deadlines, and an
operator restarted mid-swap, over tables of engines and clocks."""

from __future__ import annotations

import itertools

import pytest

from roundhouse_api.ondemand import Budget, DemandPlan, DemandView, plan_on_demand

T = 1_000_000.0  # "now" in the tables
B8 = Budget(gpus=8, min_active=60, idle=0, drain=30)


def running(name: str, gpus: int = 8, activated: float = T - 600, last: float | None = T - 300, **kw: object
            ) -> DemandView:  # fmt: skip
    return DemandView(name=name, gpus=gpus, spec_replicas=1, deployed=1, pods=1, ready=True,
                      activated_at=activated, last_request_at=last, **kw)  # type: ignore[arg-type]  # fmt: skip


def standby(name: str, gpus: int = 8, demanded: float | None = None, **kw: object) -> DemandView:
    return DemandView(name=name, gpus=gpus, spec_replicas=1, deployed=0, pods=0, demanded_at=demanded,
                      **kw)  # type: ignore[arg-type]  # fmt: skip


def states(p: DemandPlan) -> dict[str, tuple[int, str]]:
    return {n: (d.replicas, d.state) for n, d in p.engines.items()}


def reasons(p: DemandPlan) -> list[tuple[str, str]]:
    return [(e.engine, e.reason) for e in p.events]


CASES: dict[str, tuple[list[DemandView], Budget, dict[str, tuple[int, str]], list[tuple[str, str]]]] = {
    "nothing demanded: standby stays down": (
        [running("a"), standby("b")], B8, {"a": (1, "active"), "b": (0, "standby")}, []),
    "demand with free GPUs starts at once": (
        [running("a", gpus=4), standby("b", gpus=4, demanded=T - 1)], B8,
        {"a": (1, "active"), "b": (1, "starting")}, [("b", "Activating")]),
    "demand without room drains the other first": (
        [running("a"), standby("b", demanded=T - 1)], B8,
        {"a": (1, "draining"), "b": (0, "waiting")}, [("a", "Draining")]),
    "the demanded engine waits while the outgoing pods stop": (
        [DemandView("a", 8, 1, deployed=0, pods=1), standby("b", demanded=T - 5)], B8,
        {"a": (0, "stopping"), "b": (0, "waiting")}, []),
    "once the pods are gone it starts": (
        [standby("a"), standby("b", demanded=T - 6)], B8, {"a": (0, "standby"), "b": (1, "starting")},
        [("b", "Activating")]),
    "minActiveSeconds protects a fresh engine": (
        [running("a", activated=T - 10), standby("b", demanded=T - 1)], B8,
        {"a": (1, "active"), "b": (0, "waiting")}, []),
    "an engine with requests in flight goes after an idle one": (
        [running("busy", gpus=4, in_flight=3, last=T - 1), running("idle", gpus=4, last=T - 100),
         standby("c", gpus=4, demanded=T)], B8,
        {"busy": (1, "active"), "idle": (1, "draining"), "c": (0, "waiting")}, [("idle", "Draining")]),
    "least recently used goes first": (
        [running("old", gpus=4, last=T - 500), running("new", gpus=4, last=T - 50), standby("c", gpus=4, demanded=T)],
        B8, {"old": (1, "draining"), "new": (1, "active"), "c": (0, "waiting")}, [("old", "Draining")]),
    "lower priority goes first among equals": (
        [running("hi", gpus=4, last=T - 50, priority=10), running("lo", gpus=4, last=T - 50, priority=1),
         standby("c", gpus=4, demanded=T)], B8,
        {"hi": (1, "active"), "lo": (1, "draining"), "c": (0, "waiting")}, [("lo", "Draining")]),
    "two small engines make room for one large": (
        [running("x", gpus=4), running("y", gpus=4), standby("big", gpus=8, demanded=T)], B8,
        {"x": (1, "draining"), "y": (1, "draining"), "big": (0, "waiting")}, [("x", "Draining"), ("y", "Draining")]),
    "larger than the budget waits and says so": (
        [standby("huge", gpus=16, demanded=T)], B8, {"huge": (0, "waiting")}, []),
    "an engine that is demanded itself is not evicted": (
        [running("a", demanded_at=T - 2), standby("b", demanded=T - 1)], B8,
        {"a": (1, "active"), "b": (0, "waiting")}, []),
    "oldest demand is served first": (
        [standby("late", gpus=8, demanded=T - 1), standby("early", gpus=8, demanded=T - 9)], B8,
        {"early": (1, "starting"), "late": (0, "waiting")}, [("early", "Activating")]),
    "over the budget (lowered) the LRU engine drains": (
        [running("a", gpus=8, last=T - 10), running("b", gpus=8, last=T - 900)], B8,
        {"a": (1, "active"), "b": (1, "draining")}, [("b", "Draining")]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_plan_table(case: str) -> None:
    engines, budget, want, events = CASES[case]
    p = plan_on_demand(engines, budget, T)
    assert states(p) == want
    assert reasons(p) == events


def test_a_drain_ends_when_the_gateways_report_nothing_in_flight() -> None:
    p = plan_on_demand([running("a", draining_since=T - 2, drained=True), standby("b", demanded=T - 2)], B8, T)
    assert states(p)["a"] == (0, "stopping") and reasons(p) == [("a", "Stopped")]
    assert "nothing left in flight" in p.engines["a"].note


def test_a_drain_waits_for_running_requests_until_its_deadline() -> None:
    a = running("a", draining_since=T - 10, in_flight=2)
    p = plan_on_demand([a, standby("b", demanded=T - 10)], B8, T)
    assert states(p)["a"] == (1, "draining") and p.engines["a"].draining_since == T - 10
    assert p.wake_in == pytest.approx(20)  # drain 30 s from T - 10
    late = plan_on_demand([a, standby("b", demanded=T - 10)], B8, T + 20)
    assert states(late)["a"] == (0, "stopping") and "drainSeconds (30s) passed" in late.engines["a"].note


def test_the_waiting_engine_wakes_the_operator_when_min_active_ends() -> None:
    p = plan_on_demand([running("a", activated=T - 45), standby("b", demanded=T)], B8, T)
    assert p.wake_in == pytest.approx(15) and "minActiveSeconds" in p.engines["b"].note


def test_idle_engines_scale_to_zero_after_idle_seconds_and_not_before_min_active() -> None:
    budget = Budget(gpus=8, min_active=60, idle=120, drain=30)
    quiet = running("a", activated=T - 600, last=T - 121)
    assert states(plan_on_demand([quiet], budget, T))["a"] == (1, "draining")
    recent = running("a", activated=T - 600, last=T - 100)
    p = plan_on_demand([recent], budget, T)
    assert states(p)["a"] == (1, "active") and p.wake_in == pytest.approx(20)
    fresh = running("a", activated=T - 30, last=None)  # started 30 s ago, never asked: min_active holds it
    p = plan_on_demand([fresh], Budget(gpus=8, min_active=60, idle=10, drain=30), T)
    assert states(p)["a"] == (1, "active") and p.wake_in == pytest.approx(30)
    busy = running("a", activated=T - 600, last=T - 500, in_flight=1)  # a long stream is not idleness
    assert states(plan_on_demand([busy], budget, T))["a"] == (1, "active")


def test_idle_seconds_zero_never_scales_down() -> None:
    p = plan_on_demand([running("a", last=T - 10**6)], B8, T)
    assert states(p)["a"] == (1, "active") and p.wake_in is None


def test_an_engine_running_without_a_record_is_adopted_from_now() -> None:
    p = plan_on_demand([running("a", activated=None, last=None)], B8, T)  # type: ignore[arg-type]
    assert p.engines["a"].activated_at == T


def test_a_restarted_operator_finishes_the_swap_from_the_recorded_drain() -> None:
    """Mid-swap state as the EngineMode's status recorded it: the drain resumes with its original
    deadline (not a new one), and the demanded engine starts once the old pods are gone."""
    views = [running("a", draining_since=T - 29), standby("b", demanded=T - 29)]
    p = plan_on_demand(views, B8, T)
    assert states(p)["a"] == (1, "draining") and p.wake_in == pytest.approx(1)
    p = plan_on_demand(views, B8, T + 1)
    assert states(p) == {"a": (0, "stopping"), "b": (0, "waiting")}
    gone = [standby("a"), standby("b", demanded=T - 29)]
    assert states(plan_on_demand(gone, B8, T + 3)) == {"a": (0, "standby"), "b": (1, "starting")}


def test_alternating_demand_swaps_at_most_once_per_min_active() -> None:
    """Demand alternates every second for 3 minutes; each swap runs the whole cycle (drain, stop,
    start). minActiveSeconds=60 allows at most one activation per minute after the first."""
    budget = Budget(gpus=8, min_active=60, idle=0, drain=0)
    state = {"a": dict(deployed=1, pods=1, activated=T - 1000.0, draining=None),
             "b": dict(deployed=0, pods=0, activated=None, draining=None)}  # fmt: skip
    activations = []
    for second in range(180):
        now = T + second
        wanted = "a" if second % 2 else "b"
        views = [DemandView(n, 8, 1, deployed=s["deployed"], pods=s["pods"], ready=bool(s["deployed"]),  # type: ignore[arg-type]
                            activated_at=s["activated"], draining_since=s["draining"],  # type: ignore[arg-type]
                            demanded_at=now if n == wanted else None, last_request_at=now - 1)
                 for n, s in state.items()]  # fmt: skip
        p = plan_on_demand(views, budget, now)
        for n, d in p.engines.items():
            s = state[n]
            if d.state == "starting" and not s["deployed"]:
                activations.append((second, n))
            s["draining"] = d.draining_since
            s["activated"] = d.activated_at if d.activated_at is not None else s["activated"]
            s["pods"] = d.replicas  # pods follow the replicas within the second
            s["deployed"] = d.replicas
    assert activations, "demand never started the standby engine"
    seconds = [s for s, _ in activations]
    assert all(b - a >= 60 for a, b in itertools.pairwise(seconds)), activations
    assert len(activations) <= 3


def _mode_status(prev_engines: list[dict[str, object]], views: list[DemandView], now: float) -> object:
    from datetime import UTC, datetime

    from roundhouse_api import EngineMode, EngineStatus, Family, Phase
    from roundhouse_operator.ondemand_status import on_demand_status

    mode = EngineMode.model_validate({
        "metadata": {"name": "default", "namespace": "ns", "generation": 1},
        "spec": {"mode": "onDemand", "onDemand": {"gpuBudget": 8}},
        "status": {"activeMode": "onDemand", "phase": "Switching", "activations": 1, "engines": prev_engines},
    })  # fmt: skip
    p = plan_on_demand(views, B8, now)
    statuses = {v.name: (Family.LLAMACPP, EngineStatus(phase=Phase.READY if v.ready else Phase.STANDBY), True)
                for v in views}  # fmt: skip
    return on_demand_status(mode, p, B8, views, statuses, datetime.fromtimestamp(now, UTC))


def test_the_mode_reports_activation_timings_and_counts() -> None:
    from datetime import UTC, datetime

    started = datetime.fromtimestamp(T - 12.5, UTC).isoformat()
    prev = [{"name": "a", "family": "llamacpp", "active": True, "state": "starting", "activatedAt": started}]
    status, events = _mode_status(prev, [running("a", activated=T - 12.5)], T)  # type: ignore[misc]
    assert [(e.reason, e.seconds) for e in events] == [("Activated", 12.5)]
    assert "a is ready 12.5s after it was started" in events[0].message
    assert status.phase.value == "Ready" and status.gpus_held == 8 and status.gpu_budget == 8
    assert status.activations == 1
    assert status.engines[0].state == "active"


def test_an_engine_larger_than_the_budget_degrades_the_mode_and_says_why() -> None:
    status, events = _mode_status([], [standby("huge", gpus=16, demanded=T)], T)  # type: ignore[misc]
    assert status.phase.value == "Degraded" and "needs 16 GPUs, more than the budget of 8" in status.message
    assert [(e.type, e.reason) for e in events] == [("Warning", "Waiting")]


def test_a_swap_counts_an_activation_and_the_mode_is_switching_meanwhile() -> None:
    status, events = _mode_status([], [standby("b", demanded=T - 1)], T)  # type: ignore[misc]
    assert status.phase.value == "Switching" and status.activations == 2
    assert [e.reason for e in events] == ["Activating"]
    ready = next(c for c in status.conditions if c.type == "Switching")
    assert ready.status == "True" and ready.reason == "Activating"

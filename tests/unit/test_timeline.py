"""Where an activation's time goes: pod milestones as the operator's watch first shows them, the
phases of an activation and of a manual switch, and their words in the events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from roundhouse_api import EngineMode, EngineStatus, Family, Phase
from roundhouse_api.ondemand import Budget, DemandView, plan_on_demand
from roundhouse_operator import timeline
from roundhouse_operator.ondemand_status import on_demand_status
from roundhouse_operator.plan import EnginePlan, ModePlan
from roundhouse_operator.store import Store
from roundhouse_operator.switch import mode_status, switch_timeline

T = 1_800_000_000.0


def pod(name: str = "p", uid: str = "u1", conditions: dict[str, str] | None = None,
        containers: list[dict[str, Any]] | None = None, created: str = "2026-12-03T10:00:00Z",
        ) -> dict[str, Any]:  # fmt: skip
    return {"metadata": {"name": name, "namespace": "ns", "uid": uid, "resourceVersion": "1",
                         "creationTimestamp": created, "labels": {"roundhouse.dev/engine": "e"}},
            "status": {"conditions": [{"type": k, "status": v} for k, v in (conditions or {}).items()],
                       "containerStatuses": containers or []}}  # fmt: skip


RUNNING = {"state": {"running": {"startedAt": "x"}}, "started": False}
STARTED = {"state": {"running": {"startedAt": "x"}}, "started": True}


@pytest.mark.parametrize(("conditions", "containers", "last"), [
    ({}, [], "created"),
    ({"PodScheduled": "True"}, [], "scheduled"),
    ({"PodScheduled": "True", "PodReadyToStartContainers": "True"}, [{"state": {"waiting": {}}}], "sandbox"),
    ({"PodScheduled": "True", "PodReadyToStartContainers": "True"}, [RUNNING], "started"),
    ({"PodScheduled": "True", "PodReadyToStartContainers": "True"}, [STARTED, RUNNING], "started"),
    ({"PodScheduled": "True", "PodReadyToStartContainers": "True"}, [STARTED], "healthy"),
    ({"PodScheduled": "True", "PodReadyToStartContainers": "True", "Ready": "True"}, [STARTED], "ready"),
    ({"Ready": "True"}, [STARTED], "ready"),  # each milestone implies the ones before it
    ({"PodScheduled": "False"}, [], "created"),
])  # fmt: skip
def test_a_pods_status_shows_its_milestones(conditions: dict[str, str], containers: list[dict[str, Any]],
                                            last: str) -> None:  # fmt: skip
    shown = timeline.reached(pod(conditions=conditions, containers=containers))
    assert shown == list(timeline.POD_MILESTONES[: timeline.POD_MILESTONES.index(last) + 1])


def test_the_store_stamps_each_milestone_when_first_seen_and_forgets_deleted_pods() -> None:
    clock = [T]
    store = Store(clock=lambda: clock[0])
    store.put("Pod", pod())
    clock[0] = T + 0.2
    store.put(
        "Pod", {**pod(conditions={"PodScheduled": "True"}), "metadata": {**pod()["metadata"], "resourceVersion": "2"}}
    )
    clock[0] = T + 0.9
    ready = pod(conditions={"PodScheduled": "True", "PodReadyToStartContainers": "True", "Ready": "True"},
                containers=[STARTED])  # fmt: skip
    store.put("Pod", {**ready, "metadata": {**ready["metadata"], "resourceVersion": "3"}})
    clock[0] = T + 5  # a later event (or a relist) showing the same milestones changes nothing
    store.put("Pod", {**ready, "metadata": {**ready["metadata"], "resourceVersion": "4"}})
    assert store.pod_times("ns", "e") == {"created": T, "scheduled": T + 0.2, "sandbox": T + 0.9, "started": T + 0.9,
                                          "healthy": T + 0.9, "ready": T + 0.9}  # fmt: skip
    store.remove("Pod", ready)
    assert store.pod_times("ns", "e") == {}
    assert store._pod_times == {}


def test_the_newest_pod_is_the_one_an_activation_started() -> None:
    store = Store(clock=lambda: T)
    store.put("Pod", pod("old", "u-old", {"Ready": "True"}, [STARTED], created="2026-12-03T09:00:00Z"))
    store.put("Pod", pod("new", "u-new", created="2026-12-03T10:00:00Z"))
    assert list(store.pod_times("ns", "e")) == ["created"]


def test_an_activation_is_a_chain_of_phases() -> None:
    times = {"created": T + 2.1, "scheduled": T + 2.12, "sandbox": T + 2.5, "started": T + 2.6, "healthy": T + 3.1,
             "ready": T + 3.2}  # fmt: skip
    phases = timeline.activation(T, T + 2.0, times)
    assert [p for p, _ in phases] == list(timeline.PHASES)
    assert [round(s, 2) for _, s in phases] == [2.0, 0.1, 0.02, 0.38, 0.1, 0.5, 0.1]
    assert timeline.describe(phases[:2]) == "demand to scale-up 2.00s, pod created 0.10s"


def test_unknown_points_are_skipped_and_out_of_order_stamps_take_zero() -> None:
    # No demand (a restarted operator adopting a start), and a pod seen after it was Ready (relist).
    phases = timeline.activation(None, T, {"created": T + 1, "ready": T + 1, "scheduled": T + 0.5})
    assert phases == [("created", 1.0), ("scheduled", 0.0), ("ready", 0.0)]
    assert timeline.activation(None, None, {}) == []


def views(ready: bool) -> list[DemandView]:
    return [DemandView(name="a", gpus=1, spec_replicas=1, deployed=1, pods=1, ready=ready, priority=0,
                       activated_at=T - 3, draining_since=None, demanded_at=None if ready else T - 3.2,
                       last_request_at=None, in_flight=0, drained=False)]  # fmt: skip


def test_the_activated_event_carries_the_timeline_from_the_request_that_asked() -> None:
    budget = Budget.of(None, 8)
    started = datetime.fromtimestamp(T - 3, UTC).isoformat()
    demanded = datetime.fromtimestamp(T - 3.2, UTC).isoformat()
    prev = [{"name": "a", "family": "llamacpp", "active": True, "state": "starting", "activatedAt": started,
             "demandedAt": demanded}]  # fmt: skip
    mode = EngineMode.model_validate({
        "metadata": {"name": "default", "namespace": "ns", "generation": 1},
        "spec": {"mode": "onDemand", "onDemand": {"gpuBudget": 8}},
        "status": {"activeMode": "onDemand", "phase": "Switching", "activations": 1, "engines": prev},
    })  # fmt: skip
    # The gateway was answered first and reports no wait any more: the demand comes from the status.
    v = views(ready=True)
    statuses = {"a": (Family.LLAMACPP, EngineStatus(phase=Phase.READY), True)}
    times = {"a": {"created": T - 2.9, "scheduled": T - 2.9, "sandbox": T - 2.5, "started": T - 2.3,
                   "healthy": T - 1.3, "ready": T - 1.2}}  # fmt: skip
    _, events = on_demand_status(mode, plan_on_demand(v, budget, T), budget, v, statuses,
                                 datetime.fromtimestamp(T, UTC), times)  # fmt: skip
    activated = next(e for e in events if e.reason == "Activated")
    assert [p for p, _ in activated.phases] == list(timeline.PHASES)
    assert round(sum(s for _, s in activated.phases), 2) == 2.0  # demand at T-3.2 to Ready at T-1.2
    assert "a is ready 3.0s after it was started: demand to scale-up 0.20s, pod created 0.10s" in activated.message
    assert "engine healthy 1.00s, pod Ready 0.10s" in activated.message


def test_the_demand_is_kept_while_the_engine_starts() -> None:
    budget = Budget.of(None, 8)
    demanded = datetime.fromtimestamp(T - 3.2, UTC)
    started = datetime.fromtimestamp(T - 3, UTC).isoformat()
    prev = [{"name": "a", "family": "llamacpp", "active": True, "state": "starting", "activatedAt": started,
             "demandedAt": demanded.isoformat()}]  # fmt: skip
    mode = EngineMode.model_validate({
        "metadata": {"name": "default", "namespace": "ns", "generation": 1},
        "spec": {"mode": "onDemand", "onDemand": {"gpuBudget": 8}},
        "status": {"activeMode": "onDemand", "phase": "Switching", "activations": 1, "engines": prev},
    })  # fmt: skip
    v = [DemandView(name="a", gpus=1, spec_replicas=1, deployed=1, pods=1, ready=False, priority=0,
                    activated_at=T - 3, draining_since=None, demanded_at=None, last_request_at=None, in_flight=0,
                    drained=False)]  # fmt: skip
    statuses = {"a": (Family.LLAMACPP, EngineStatus(phase=Phase.STARTING), True)}
    status, _ = on_demand_status(
        mode, plan_on_demand(v, budget, T), budget, v, statuses, datetime.fromtimestamp(T, UTC)
    )
    assert status.engines[0].state == "starting" and status.engines[0].demanded_at == demanded


def test_a_switch_says_drain_and_gone_then_the_last_incoming_pods_milestones() -> None:
    started = datetime.fromtimestamp(T, UTC)
    on, off = EnginePlan(replicas=1, active=True, held=False), EnginePlan(replicas=0, active=False, held=False)
    p = ModePlan(engines={"in-a": on, "in-b": on, "out": off})
    engines = {n: (Family.OLLAMA, EngineStatus(phase=Phase.READY), True) for n in p.engines}
    base = {"created": T + 2.4, "scheduled": T + 2.4, "sandbox": T + 2.7, "started": T + 2.8, "healthy": T + 3.3}
    times = {"in-a": {**base, "ready": T + 3.4}, "in-b": {**base, "ready": T + 3.9},
             "out": {"created": T - 60, "ready": T - 59}}  # fmt: skip
    found = switch_timeline(started, p, engines, times)
    assert found is not None
    name, phases = found
    assert name == "in-b"
    assert [ph for ph, _ in phases] == ["drain-and-gone", "scheduled", "sandbox", "started", "healthy", "ready"]
    assert round(sum(s for _, s in phases), 2) == 3.9
    # An incoming pod older than the switch (it was running already) says nothing about this switch.
    assert switch_timeline(started, p, engines, {"in-a": {"created": T - 5, "ready": T - 4}}) is None


def test_switch_completed_names_its_phases() -> None:
    started = datetime.fromtimestamp(T, UTC)
    mode = EngineMode.model_validate({
        "metadata": {"name": "default", "namespace": "ns", "generation": 2},
        "spec": {"mode": "ollama"},
        "status": {"activeMode": "vllm", "previousMode": "vllm", "phase": "Switching",
                   "switchStartedAt": started.isoformat(), "observedGeneration": 2},
    })  # fmt: skip
    p = ModePlan(
        engines={
            "in": EnginePlan(replicas=1, active=True, held=False),
            "out": EnginePlan(replicas=0, active=False, held=False),
        }
    )
    engines = {"in": (Family.OLLAMA, EngineStatus(phase=Phase.READY), True),
               "out": (Family.VLLM, EngineStatus(phase=Phase.STANDBY), True)}  # fmt: skip
    times = {"in": {"created": T + 2.4, "scheduled": T + 2.4, "sandbox": T + 2.7, "started": T + 2.8,
                    "healthy": T + 3.3, "ready": T + 3.4}}  # fmt: skip
    _, events = mode_status(mode, p, engines, datetime.fromtimestamp(T + 3.5, UTC), times)
    done = next(e for e in events if e.reason == "SwitchCompleted")
    assert done.message.startswith("now ollama (from vllm) in 3.5s: outgoing drained and gone, incoming pod created")
    assert "engine healthy 0.50s, pod Ready 0.10s (in, the last to start)" in done.message
    assert done.phases[0][0] == "drain-and-gone"


def test_a_switch_drain_ends_early_only_on_reports_written_since_this_switch_began() -> None:
    from roundhouse_api.demand import GatewayReport
    from roundhouse_operator.switch import drain_over

    started = datetime.fromtimestamp(T, UTC).isoformat()
    idle = [GatewayReport(at=T + 0.5, inFlight={})]

    def mode(spec: str, active: str, phase: str) -> EngineMode:
        return EngineMode.model_validate({
            "metadata": {"name": "default", "namespace": "ns", "generation": 2}, "spec": {"mode": spec},
            "status": {"activeMode": active, "phase": phase, "switchStartedAt": started},
        })  # fmt: skip

    assert drain_over(mode("ollama", "vllm", "Switching"), ["v"], idle)
    assert not drain_over(mode("ollama", "vllm", "Switching"), ["v"], [GatewayReport(at=T + 0.5, inFlight={"v": 1})])
    assert not drain_over(mode("ollama", "vllm", "Switching"), ["v"], [GatewayReport(at=T - 0.5, inFlight={})])
    assert not drain_over(mode("ollama", "vllm", "Switching"), ["v"], [])
    assert not drain_over(mode("ollama", "vllm", "Switching"), [], idle)
    # Patched again after an earlier switch: the start in the status is that one's, and the gateways'
    # reports since then say nothing about this switch yet.
    assert not drain_over(mode("vllm", "ollama", "Ready"), ["o"], idle)

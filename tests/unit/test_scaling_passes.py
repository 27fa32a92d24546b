"""spec.autoscaling through the controller's passes (the API server faked): the Deployment follows the
gateways' reports, status and events say why, an engine without it keeps spec.replicas (an HPA's)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from roundhouse_api import EngineStatus, InferenceEngine, ScalingStatus
from roundhouse_api.autoscaler import Scale
from roundhouse_api.demand import GatewayReport, report_key
from roundhouse_operator.scaling import History, current, scaling_status
from tests.unit.test_controller_passes import NS, FakeKube, controller, em, ie


class EventKube(FakeKube):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, str, str]] = []

    def event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((obj["metadata"]["name"], reason, message))


def scaled_ie(name: str, **autoscaling: Any) -> dict[str, Any]:
    body = ie(name, "llamacpp")
    body["spec"]["model"]["source"] = "/models/m.gguf"
    body["spec"]["autoscaling"] = {"maxReplicas": 5, "targetRequestsPerReplica": 4, "scaleUpSeconds": 0,
                                   "scaleDownSeconds": 0, **autoscaling}  # fmt: skip
    return body


def fixed() -> dict[str, Any]:
    body = scaled_ie("fixed")
    del body["spec"]["autoscaling"]
    return body


def report(mode: dict[str, Any], gateway: str, **in_flight: int) -> None:
    """A gateway's report on the EngineMode, as routing/demand.py writes it."""
    wire = GatewayReport(at=time.time(), inFlight=in_flight).wire()
    mode["metadata"].setdefault("annotations", {})[report_key(gateway)] = wire


def replicas(c: Any, name: str) -> int:
    return int(c.store.get("Deployment", NS, name)["spec"]["replicas"])


def test_replicas_follow_the_reports_and_say_why() -> None:
    mode = em("llamacpp")
    report(mode, "gw-1", a=12, fixed=40)
    c, _ = controller(("EngineMode", mode), ("InferenceEngine", scaled_ie("a")), ("InferenceEngine", fixed()))
    kube = EventKube()
    kube.store = c.store  # type: ignore[attr-defined]
    c.kube = kube  # type: ignore[assignment]
    asyncio.run(c.reconcile(NS))
    assert replicas(c, "a") == 3
    status = c.store.get("InferenceEngine", NS, "a")["status"]  # type: ignore[index]
    assert status["desiredReplicas"] == 3
    assert status["scaling"]["wantedReplicas"] == 3 and status["scaling"]["load"] == 12
    assert status["scaling"]["reason"] == "12 requests running and waiting per replica, target 4"

    mode = c.store.get("EngineMode", NS, "default")  # type: ignore[assignment]
    report(mode, "gw-2", a=8)  # a second gateway: 20 in all
    mode["metadata"]["resourceVersion"] = "999"
    c.store.put("EngineMode", mode)
    asyncio.run(c.reconcile(NS))
    assert replicas(c, "a") == 5
    assert ("a", "ScaledUp", "3→5: 6.67 requests running and waiting per replica, target 4") in kube.events

    # An engine without spec.autoscaling runs spec.replicas (what an HPA on the scale subresource sets).
    assert replicas(c, "fixed") == 1
    hpa = c.store.get("InferenceEngine", NS, "fixed")
    hpa["spec"]["replicas"], hpa["metadata"]["generation"] = 2, 2  # type: ignore[index]
    c.store.put("InferenceEngine", hpa)  # type: ignore[arg-type]
    asyncio.run(c.reconcile(NS))
    assert replicas(c, "fixed") == 2
    assert "scaling" not in c.store.get("InferenceEngine", NS, "fixed")["status"]  # type: ignore[index]


def test_within_the_on_demand_budget_the_status_says_what_it_got() -> None:
    mode = em("onDemand")
    mode["spec"] = {"mode": "onDemand", "onDemand": {"gpuBudget": 2}}
    report(mode, "gw-1", a=20)
    meta = {"name": "a", "namespace": NS, "uid": "d-a", "resourceVersion": "1", "annotations": {}}
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {"replicas": 1},
                  "status": {"readyReplicas": 1}}  # fmt: skip
    c, _ = controller(("EngineMode", mode), ("InferenceEngine", scaled_ie("a")), ("Deployment", deployment))
    asyncio.run(c.reconcile(NS))
    assert replicas(c, "a") == 2
    status = c.store.get("InferenceEngine", NS, "a")["status"]  # type: ignore[index]
    assert status["scaling"]["wantedReplicas"] == 5 and status["scaling"]["desiredReplicas"] == 2
    assert status["scaling"]["reason"].endswith("; 2 of 5 replicas: waiting for GPUs (budget 2)")


def test_scaling_status_events_only_for_a_running_engine_changing_size() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    scale = Scale(3, 14, "14 requests running and waiting per replica, target 4", "up")
    before = EngineStatus(desiredReplicas=1, scaling=ScalingStatus(wantedReplicas=1, desiredReplicas=1))
    status, event = scaling_status(scale, 3, "", before, now)
    assert event is not None and (event.reason, event.message) == (
        "ScaledUp", "1→3: 14 requests running and waiting per replica, target 4")  # fmt: skip
    assert status.last_scale_time == now
    assert scaling_status(scale, 3, "", EngineStatus(desiredReplicas=0), now)[1] is None  # a start: on-demand's event
    assert scaling_status(scale, 3, "", EngineStatus(desiredReplicas=3), now)[1] is None


def test_history_keeps_each_report_version_for_the_longest_window_and_a_restart_goes_on_from_status() -> None:
    h = History()
    for at in (0.0, 10.0, 200.0):
        h.see(NS, [{report_key("g"): GatewayReport(at=at, inFlight={"a": 4}).wire(), "other": "x"}], at, horizon=120)
    h.see(NS, [{report_key("g"): GatewayReport(at=200.0, inFlight={"a": 4}).wire()}], 201, horizon=120)
    assert [r.at for _, r in h.ordered[NS]] == [200.0]  # 0 and 10 are older than 120 s + REPORT_TTL
    engine = InferenceEngine.model_validate(scaled_ie("a"))
    before = EngineStatus(scaling=ScalingStatus(wantedReplicas=3, desiredReplicas=2))
    assert current(engine, before, deployed=2) == 3  # the autoscaler's answer, not what the budget gave
    assert current(engine, None, deployed=2) == 2

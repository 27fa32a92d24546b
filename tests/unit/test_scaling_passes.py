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


class AnnotatingKube(EventKube):
    """Pod annotations patched as the API server would: the pod in the store carries them next pass."""

    def __init__(self) -> None:
        super().__init__()
        self.annotated: list[tuple[str, dict[str, str | None]]] = []

    def annotate_pod(self, namespace: str, name: str, annotations: dict[str, str | None]) -> None:
        self.annotated.append((name, annotations))
        pod = self.store.get("Pod", namespace, name)  # type: ignore[attr-defined]
        notes = {**(pod["metadata"].get("annotations") or {}), **annotations}
        pod["metadata"]["annotations"] = {k: v for k, v in notes.items() if v is not None}
        pod["metadata"]["resourceVersion"] = str(next(self.rv))
        self.store.put("Pod", pod)  # type: ignore[attr-defined]


def engine_pod(name: str, minute: int, ip: str) -> dict[str, Any]:
    meta = {
        "name": name,
        "namespace": NS,
        "uid": f"p-{name}",
        "resourceVersion": "1",
        "labels": {"roundhouse.dev/engine": "a"},
        "creationTimestamp": f"2026-12-07T11:{minute:02d}:00Z",
    }
    ready = [{"type": "Ready", "status": "True"}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "status": {"phase": "Running", "podIP": ip, "conditions": ready}}  # fmt: skip


def test_a_scale_down_keeps_the_deployment_until_the_gateways_report_the_stopped_replica_drained() -> None:
    """2→1: the newest pod is listed on status.stopping (the gateways route there no more) and marked for
    the ReplicaSet, the Deployment stays at 2 while a gateway has a request on it, and goes to 1 once
    every gateway has written since with nothing in flight there."""
    mode = em("llamacpp")
    mode["spec"]["switchPolicy"]["drainSeconds"] = 30
    report(mode, "gw-1", a=1)
    meta = {"name": "a", "namespace": NS, "uid": "d-a", "resourceVersion": "1", "annotations": {}}
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {"replicas": 2},
                  "status": {"readyReplicas": 2}}  # fmt: skip
    pods = [("Pod", engine_pod("a-old", 1, "10.0.0.1")), ("Pod", engine_pod("a-new", 2, "10.0.0.2"))]
    c, _ = controller(("EngineMode", mode), ("InferenceEngine", scaled_ie("a")), ("Deployment", deployment), *pods)
    kube = AnnotatingKube()
    kube.store = c.store  # type: ignore[attr-defined]
    c.kube = kube  # type: ignore[assignment]
    asyncio.run(c.reconcile(NS))
    assert kube.annotated == [("a-new", {"controller.kubernetes.io/pod-deletion-cost": "-2147483648"})]
    status = c.store.get("InferenceEngine", NS, "a")["status"]  # type: ignore[index]
    assert [(s["pod"], s["address"]) for s in status["stopping"]] == [("a-new", "10.0.0.2")]
    assert status["desiredReplicas"] == 1 and replicas(c, "a") == 2
    assert ("a", "StoppingReplicas", "2→1: a-new out of routing; stopped once the gateways report its requests"
            " done (30s at most)") in kube.events  # fmt: skip

    def gateway_says(**stopping: int) -> None:
        mode = c.store.get("EngineMode", NS, "default")
        wire = GatewayReport(at=time.time() + 1, inFlight={"a": 1}, stopping=stopping).wire()
        mode["metadata"]["annotations"][report_key("gw-1")] = wire  # type: ignore[index]
        mode["metadata"]["resourceVersion"] = str(next(kube.rv))  # type: ignore[index]
        c.store.put("EngineMode", mode)  # type: ignore[arg-type]
        asyncio.run(c.reconcile(NS))

    gateway_says(a=1)  # a request still runs on the stopping replica
    assert replicas(c, "a") == 2
    gateway_says()
    assert replicas(c, "a") == 1
    assert [s["pod"] for s in c.store.get("InferenceEngine", NS, "a")["status"]["stopping"]] == ["a-new"]  # type: ignore[index]

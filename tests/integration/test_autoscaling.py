"""spec.autoscaling against the real API server and the operator, pods on the simulated GPU nodes.

The gateways' side is played by the test: it writes their reports on the EngineMode (the annotation
routing/demand.py writes, refreshed as a busy gateway refreshes it), so the load is exact and the
scenario's clock is the test's. A burst scales 1→3 within the budget and back after the window, to
zero after idleSeconds; two models contending for a budget of 2 both get a replica; an engine whose
replicas a real HorizontalPodAutoscaler drives (the scale subresource) is left alone, whatever the load.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from roundhouse_api.demand import GatewayReport, report_key
from tests.integration.test_on_demand import events, phase, pods_of
from tests.integration.test_operator import small
from tests.support.cluster import Cluster, wait_until
from tests.support.processes import Process

pytestmark = pytest.mark.integration


class Gateway:
    """A gateway's report on the EngineMode, rewritten every second with the load the test sets."""

    def __init__(self, cluster: Cluster, namespace: str, name: str = "gateway-test") -> None:
        self.cluster, self.namespace, self.key = cluster, namespace, report_key(name)
        self.in_flight: dict[str, int] = {}
        self.queued: dict[str, int] = {}
        self.stopping: dict[str, int] = {}  # requests on replicas a scale-down stops (status.stopping)
        self.engine: dict[str, float] = {}  # what the engines' replicas say they hold (their own metrics)
        self.last: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def load(self, in_flight: dict[str, int] | None = None, queued: dict[str, int] | None = None,
             stopping: dict[str, int] | None = None, engine: dict[str, float] | None = None) -> None:  # fmt: skip
        now = time.time()
        self.in_flight, self.queued, self.stopping = dict(in_flight or {}), dict(queued or {}), dict(stopping or {})
        self.engine = dict(engine or {})
        self.last.update({e: now for e in (*self.in_flight, *self.queued)})
        self.write()

    def write(self) -> None:
        now = time.time()
        report = GatewayReport(at=now, waiting={e: now - 1 for e in self.queued}, queued=self.queued,
                               inFlight=self.in_flight, lastRequest=self.last, stopping=self.stopping,
                               engineLoad=self.engine)  # fmt: skip
        self.cluster.kubectl("annotate", "--overwrite", "enginemode", "default", f"{self.key}={report.wire()}",
                             namespace=self.namespace)  # fmt: skip

    def run(self) -> None:
        while not self.stop.wait(1.0):
            if self.in_flight or self.queued or any(self.engine.values()):  # busy: refreshed; idle: not
                self.write()


@pytest.fixture
def gateway(crds: Cluster, namespace: str) -> Iterator[Gateway]:
    g = Gateway(crds, namespace)
    yield g
    g.stop.set()


def on_demand(cluster: Cluster, namespace: str, **policy: Any) -> None:
    spec = {"gpuBudget": 3, "minActiveSeconds": 0, "drainSeconds": 2, "maxWaitSeconds": 60, **policy}
    cluster.apply({"apiVersion": "roundhouse.dev/v1alpha1", "kind": "EngineMode", "metadata": {"name": "default"},
                   "spec": {"mode": "onDemand", "onDemand": spec}}, namespace)  # fmt: skip


def elastic(name: str, **autoscaling: Any) -> dict[str, Any]:
    policy = {"minReplicas": 0, "maxReplicas": 5, "targetRequestsPerReplica": 4, "scaleUpSeconds": 0,
              "scaleDownSeconds": 5, **autoscaling}  # fmt: skip
    return small(name, "llamacpp", gpus=1, autoscaling=policy)


def deployed(cluster: Cluster, name: str, ns: str) -> int:
    return int(cluster.get("deployment", name, ns)["spec"]["replicas"])


def status(cluster: Cluster, name: str, ns: str) -> dict[str, Any]:
    return cluster.get("ie", name, ns).get("status") or {}


def test_a_burst_scales_up_within_the_budget_and_back_after_the_window(
    operator: Process, crds: Cluster, namespace: str, gateway: Gateway
) -> None:
    c = crds
    on_demand(c, namespace, idleSeconds=12)
    c.apply(elastic("alpha"), namespace)
    wait_until(lambda: phase(c, "alpha", namespace) == "Standby", 30, "alpha on standby")
    gateway.thread.start()

    gateway.load(queued={"alpha": 1})  # one request waits: alpha starts with one replica
    wait_until(lambda: phase(c, "alpha", namespace) == "Ready", 60, "alpha ready")
    assert deployed(c, "alpha", namespace) == 1
    gateway.load(in_flight={"alpha": 1})

    gateway.load(in_flight={"alpha": 2}, queued={"alpha": 12})  # a burst: 14 for a target of 4 a replica
    wait_until(lambda: pods_of(c, namespace).get("alpha") == 3 and status(c, "alpha", namespace).get("phase")
               == "Ready", 60, "alpha at 3 ready replicas")  # fmt: skip
    assert deployed(c, "alpha", namespace) == 3  # it wants 4; the budget is 3
    st = status(c, "alpha", namespace)
    assert st["desiredReplicas"] == 3 and st["ready"] == "3/3"
    assert st["scaling"]["wantedReplicas"] == 4 and st["scaling"]["desiredReplicas"] == 3, st["scaling"]
    assert "waiting for GPUs (budget 3)" in st["scaling"]["reason"]
    up = events(c, namespace, "ScaledUp", kind="InferenceEngine")
    assert up and up[-1]["message"].startswith("1→3: 14 requests running and waiting per replica, target 4"), up
    assert c.get("em", "default", namespace)["status"]["gpusHeld"] <= 3

    burst_over = time.monotonic()
    gateway.load(in_flight={})  # the last request ends: the gateway says so once, then goes quiet
    wait_until(lambda: deployed(c, "alpha", namespace) == 1, 30, "alpha back to 1 replica")
    assert time.monotonic() - burst_over >= 5  # not before scaleDownSeconds
    down = events(c, namespace, "ScaledDown", kind="InferenceEngine")
    assert down and down[-1]["message"].startswith("3→1: "), down

    wait_until(lambda: phase(c, "alpha", namespace) == "Standby" and not pods_of(c, namespace).get("alpha"), 60,
               "alpha scaled to zero after idleSeconds")  # fmt: skip


def test_a_scale_down_stops_routing_to_the_replica_and_deletes_it_only_once_its_requests_are_done(
    operator: Process, crds: Cluster, namespace: str, gateway: Gateway
) -> None:
    """2→1 with a request still running on the replica the operator stops: it is listed on status.stopping
    (the gateways route there no more) and marked for the ReplicaSet, the Deployment stays at 2 while the
    gateway reports that request, and goes to 1 once it has ended: the pod deleted is the one listed."""
    c = crds
    on_demand(c, namespace, drainSeconds=600)  # no deadline within the test: only the report ends the drain
    c.apply(elastic("beta", minReplicas=1, scaleDownSeconds=0), namespace)
    gateway.thread.start()
    gateway.load(queued={"beta": 1})  # one request waits: beta starts
    wait_until(lambda: phase(c, "beta", namespace) == "Ready", 60, "beta ready")
    gateway.load(in_flight={"beta": 8})
    wait_until(lambda: pods_of(c, namespace).get("beta") == 2 and status(c, "beta", namespace).get("ready") == "2/2",
               60, "beta at 2 ready replicas")  # fmt: skip

    gateway.load(in_flight={"beta": 1}, stopping={"beta": 1})  # calm, and its last request runs where it stops
    wait_until(lambda: status(c, "beta", namespace).get("stopping"), 30, "a replica listed as stopping")
    stopped = status(c, "beta", namespace)["stopping"][0]["pod"]
    pod = c.get("pod", stopped, namespace)
    assert pod["metadata"]["annotations"]["controller.kubernetes.io/pod-deletion-cost"] == "-2147483648"
    assert status(c, "beta", namespace)["stopping"][0]["address"] == pod["status"].get("podIP", "")
    time.sleep(5)  # reports keep saying a request runs there: nothing is deleted
    assert deployed(c, "beta", namespace) == 2 and stopped in names_of(c, namespace, "beta")

    gateway.load(in_flight={"beta": 1})  # that request has ended
    wait_until(lambda: deployed(c, "beta", namespace) == 1, 30, "beta down to 1 once the stopped replica is drained")
    wait_until(lambda: len(names_of(c, namespace, "beta")) == 1, 60, "the stopped pod gone")
    assert stopped not in names_of(c, namespace, "beta")
    down = events(c, namespace, "ScaledDown", kind="InferenceEngine")
    assert down and down[-1]["message"].startswith("2→1: "), down
    wait_until(lambda: not status(c, "beta", namespace).get("stopping"), 30, "status.stopping empty again")


def test_requests_sent_around_the_gateways_scale_the_engine_through_its_own_count(
    operator: Process, crds: Cluster, namespace: str, gateway: Gateway
) -> None:
    """One request through the gateway, 11 more the engine's replica reports holding (sent to it
    directly): the load is 12 for a target of 4, so 3 replicas."""
    c = crds
    on_demand(c, namespace)
    c.apply(elastic("gamma", minReplicas=1), namespace)
    gateway.thread.start()
    gateway.load(queued={"gamma": 1})
    wait_until(lambda: phase(c, "gamma", namespace) == "Ready", 60, "gamma ready")
    gateway.load(in_flight={"gamma": 1}, engine={"gamma": 12.0})
    wait_until(lambda: deployed(c, "gamma", namespace) == 3, 30, "gamma at 3 replicas from the engine's own count")
    assert status(c, "gamma", namespace)["scaling"]["load"] == 12


def names_of(c: Cluster, namespace: str, engine: str) -> list[str]:
    return [p["metadata"]["name"] for p in c.list("pods", namespace, selector=f"roundhouse.dev/engine={engine}")]


def test_two_models_contending_for_a_budget_of_two_both_get_served(
    operator: Process, crds: Cluster, namespace: str, gateway: Gateway
) -> None:
    c = crds
    on_demand(c, namespace, gpuBudget=2)
    c.apply([elastic("alpha"), elastic("beta")], namespace)
    wait_until(lambda: phase(c, "beta", namespace) == "Standby", 30, "engines on standby")
    gateway.thread.start()
    gateway.load(queued={"alpha": 20})
    wait_until(lambda: deployed(c, "alpha", namespace) == 2, 60, "alpha takes the whole budget")

    gateway.load(in_flight={"alpha": 20}, queued={"beta": 3})  # beta's requests wait for its first replica
    wait_until(lambda: phase(c, "beta", namespace) == "Ready" and deployed(c, "alpha", namespace) == 1, 60,
               "alpha gives a replica back, beta starts")  # fmt: skip
    assert events(c, namespace, "ScalingDown", kind="InferenceEngine")
    st = c.get("em", "default", namespace)["status"]
    assert st["gpusHeld"] <= 2 and {e["name"]: e["state"] for e in st["engines"]} == {
        "alpha": "active",
        "beta": "active",
    }


def test_an_engine_whose_replicas_an_hpa_drives_is_left_alone(
    operator: Process, crds: Cluster, namespace: str, gateway: Gateway
) -> None:
    c = crds
    c.apply({"apiVersion": "roundhouse.dev/v1alpha1", "kind": "EngineMode", "metadata": {"name": "default"},
             "spec": {"mode": "llamacpp"}}, namespace)  # fmt: skip
    c.apply(small("fixed", "llamacpp", gpus=1), namespace)
    wait_until(lambda: phase(c, "fixed", namespace) == "Ready", 60, "fixed ready")
    gateway.thread.start()
    gateway.load(in_flight={"fixed": 40})  # heavy load: without spec.autoscaling it changes nothing
    # A real HorizontalPodAutoscaler on the InferenceEngine's scale subresource: below its minReplicas the
    # controller-manager scales it up without needing any metric.
    cpu = {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}
    target = {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine", "name": "fixed"}
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "fixed"},
        "spec": {"scaleTargetRef": target, "minReplicas": 2, "maxReplicas": 3, "metrics": [cpu]},
    }
    c.apply(hpa, namespace)
    wait_until(lambda: deployed(c, "fixed", namespace) == 2 and status(c, "fixed", namespace).get("desiredReplicas")
               == 2, 60, "the HPA scales the engine through its scale subresource")  # fmt: skip
    able = next(x for x in c.get("hpa", "fixed", namespace)["status"]["conditions"] if x["type"] == "AbleToScale")
    assert able["status"] == "True", able  # it read and wrote the scale subresource
    assert "DESIRED" in c.kubectl("get", "ie", "fixed", namespace=namespace).stdout
    time.sleep(3)  # passes go on (the reports keep coming); nothing is changed back
    assert deployed(c, "fixed", namespace) == 2 and c.get("ie", "fixed", namespace)["spec"]["replicas"] == 2
    assert "scaling" not in status(c, "fixed", namespace)
    assert not events(c, namespace, "ScaledUp", kind="InferenceEngine")

"""The gateway watching real InferenceEngine/EngineMode objects on the local control plane."""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import processes
from tests.support.cluster import Cluster, wait_until
from tests.support.processes import Process

pytestmark = pytest.mark.integration
KEY, ADMIN = "sk-cluster", "admin-cluster"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "gateway-cluster"


@pytest.fixture
def sims() -> Iterator[dict[str, Process]]:
    procs = {
        "v": processes.enginesim("vllm", "v", ["m"], ARTIFACTS).start(),
        "o": processes.enginesim("ollama", "o", ["m"], ARTIFACTS).start(),
    }
    yield procs
    for p in procs.values():
        p.stop()


@pytest.fixture
def gateway(crds: Cluster, namespace: str, tmp_path: Path) -> Iterator[Process]:
    proc = processes.cluster_gateway(namespace, crds.kubeconfig, tmp_path, ARTIFACTS, [KEY], [ADMIN]).start()
    yield proc
    proc.stop()


def ie(name: str, family: str, url: str) -> dict[str, Any]:
    return {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine", "metadata": {"name": name},
            "spec": {"engine": family, "model": {"source": "m", "servedName": "m"}, "endpoints": [url]}}  # fmt: skip


def served_by(url: str) -> str | None:
    try:
        r = httpx.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=5,
                       json={"model": "m", "messages": [{"role": "user", "content": "x"}]})  # fmt: skip
    except httpx.HTTPError:
        return None
    return r.headers.get("x-roundhouse-engine") if r.status_code == 200 else None


def time_until(probe: Any, timeout: float = 30) -> float:
    start = time.monotonic()
    wait_until(probe, timeout, "the change to reach routing", interval=0.01)
    return time.monotonic() - start


def test_gateway_follows_engines_and_mode_switches_without_restart(
    crds: Cluster, namespace: str, sims: dict[str, Process], gateway: Process
) -> None:
    url = gateway.url  # type: ignore[attr-defined]
    mode = {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "EngineMode", "metadata": {"name": "default"},
            "spec": {"mode": "vllm"}}  # fmt: skip
    crds.apply(mode, namespace)
    wait_until(lambda: httpx.get(url + "/readyz").status_code == 200, 30, "gateway synced")
    assert served_by(url) is None  # no engine yet: 404

    crds.apply(ie("vllm-engine", "vllm", sims["v"].url), namespace)  # type: ignore[attr-defined]
    new_engine = time_until(lambda: served_by(url) == "vllm-engine")
    crds.apply(ie("ollama-engine", "ollama", sims["o"].url), namespace)  # type: ignore[attr-defined]
    wait_until(lambda: "ollama-engine" in httpx.get(url + "/admin/engines", headers={
        "Authorization": f"Bearer {ADMIN}"}).text, 30, "ollama engine known")  # fmt: skip
    assert served_by(url) == "vllm-engine"

    switches = []
    for target, engine in [("ollama", "ollama-engine"), ("vllm", "vllm-engine")] * 10:
        patch = json.dumps({"spec": {"mode": target}})
        start = time.monotonic()
        crds.kubectl("patch", "enginemode", "default", "--type", "merge", "-p", patch, namespace=namespace)
        wait_until(lambda engine=engine: served_by(url) == engine, 30, f"routing to {engine}", interval=0.01)  # type: ignore[misc]
        switches.append(time.monotonic() - start)

    r = httpx.put(url + "/admin/engine-mode", json={"mode": "ollama"}, headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200 and r.json()["previous"] == "vllm" and r.json()["mode"] == "ollama"
    assert crds.get("em", "default", namespace)["spec"]["mode"] == "ollama"
    wait_until(lambda: served_by(url) == "ollama-engine", 30, "routing after the admin switch")

    crds.kubectl("delete", "ie", "ollama-engine", namespace=namespace)
    wait_until(lambda: served_by(url) is None, 30, "deleted engine gone from routing")

    ordered = sorted(switches)
    report = {"new_engine_to_routing_s": round(new_engine, 3),
              "kubectl_patch_to_routing_s": {"n": len(switches), "p50": round(statistics.median(switches), 3),
                                             "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
                                             "max": round(max(switches), 3)}}  # fmt: skip
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "watch-to-route.json").write_text(json.dumps(report, indent=2))
    print("watch-to-route:", report)


def test_endpointslice_replicas_are_judged_one_by_one(crds: Cluster, unmanaged: str, tmp_path: Path) -> None:
    from tests.support.netns import TestHost

    # The test writes the engine's EndpointSlice itself: an operator reconciling the namespace would
    # add a Service, a kwok pod and a slice of its own for the same engine (seen in full runs).
    namespace = unmanaged
    gateway = processes.cluster_gateway(namespace, crds.kubeconfig, tmp_path, ARTIFACTS, [KEY], [ADMIN]).start()

    hosts, sims = [], []
    try:
        for i in (1, 2):
            host = TestHost.create(i)
            hosts.append(host)
            prefix = tuple(host.run([]))
            sims.append(processes.enginesim("vllm", f"r{i}", ["m"], ARTIFACTS, host.address, 8000, prefix).start())
        engine = {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine", "metadata": {"name": "pool"},
                  "spec": {"engine": "vllm", "model": {"source": "m", "servedName": "m"}}}  # fmt: skip
        eps = [{"addresses": [h.address], "conditions": {"ready": True}} for h in hosts]
        slice_ = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                  "metadata": {"name": "pool-abc12", "labels": {"kubernetes.io/service-name": "pool"}},
                  "addressType": "IPv4", "ports": [{"name": "http", "port": 8000, "protocol": "TCP"}],
                  "endpoints": eps}  # fmt: skip
        crds.apply([engine, slice_], namespace)
        url = gateway.url  # type: ignore[attr-defined]
        seen: set[str] = set()

        asked = iter(range(10_000))

        def both_replicas_serve() -> bool:
            # A new prompt each time: the same one would stay on its replica (prefix affinity).
            body = {"model": "m", "messages": [{"role": "user", "content": f"question {next(asked)}"}]}
            r = httpx.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, json=body,
                           timeout=5)  # fmt: skip
            if r.status_code == 200:
                seen.add(r.json()["choices"][0]["message"]["content"][:2])
            return seen == {"r1", "r2"}

        wait_until(both_replicas_serve, 30, "both EndpointSlice replicas to serve")
        sims[0].kill()  # one replica dies: the other keeps every request answered
        for _ in range(20):
            r = httpx.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                           json={"model": "m", "messages": [{"role": "user", "content": "x"}]}, timeout=10)  # fmt: skip
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].startswith("r2"), r.text

        def health() -> dict[str, str]:
            engines = httpx.get(url + "/admin/engines", headers={"Authorization": f"Bearer {ADMIN}"}).json()["engines"]
            return {e["url"]: e["health"] for e in engines[0]["endpoints"]}

        # The 20 requests may all have gone to r2 (one prompt, one replica by prefix affinity) within one
        # probe interval: the dead replica is then judged by the next active probe.
        wait_until(lambda: health()["http://10.213.1.2:8000"] != "ok", 5, "the dead replica judged down")
        assert health()["http://10.213.2.2:8000"] == "ok"
    finally:
        gateway.stop()
        for s in sims:
            s.stop()
        for h in hosts:
            h.delete()


def test_an_autoscaled_engines_own_count_reaches_the_report_with_requests_sent_around_the_gateway(
    crds: Cluster, unmanaged: str, tmp_path: Path
) -> None:
    """Requests sent straight to an autoscaled engine's replica, none through the gateway: the gateway reads
    the replica's own metrics (vllm:num_requests_running) and its report on the EngineMode says so."""
    from roundhouse_api.demand import REPORT_PREFIX, GatewayReport
    from tests.support.netns import TestHost

    namespace = unmanaged
    gateway = processes.cluster_gateway(namespace, crds.kubeconfig, tmp_path, ARTIFACTS, [KEY], [ADMIN]).start()
    host = TestHost.create(3)
    sim = processes.enginesim("vllm", "auto", ["m"], ARTIFACTS, host.address, 8000, tuple(host.run([])),
                              ttft_ms=20000).start()  # fmt: skip
    held: list[httpx.Response | Exception] = []

    def straight() -> None:
        try:
            held.append(httpx.post(sim.url + "/v1/chat/completions", timeout=30,  # type: ignore[attr-defined]
                                   json={"model": "m", "messages": [{"role": "user", "content": "x"}]}))  # fmt: skip
        except httpx.HTTPError as err:
            held.append(err)

    threads = [threading.Thread(target=straight, daemon=True) for _ in range(5)]
    try:
        mode = {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "EngineMode", "metadata": {"name": "default"},
                "spec": {"mode": "vllm"}}  # fmt: skip
        engine = {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine", "metadata": {"name": "auto"},
                  "spec": {"engine": "vllm", "model": {"source": "m", "servedName": "m"},
                           "autoscaling": {"maxReplicas": 4}}}  # fmt: skip
        slice_ = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                  "metadata": {"name": "auto-abc12", "labels": {"kubernetes.io/service-name": "auto"}},
                  "addressType": "IPv4", "ports": [{"name": "http", "port": 8000, "protocol": "TCP"}],
                  "endpoints": [{"addresses": [host.address], "conditions": {"ready": True}}]}  # fmt: skip
        crds.apply([mode, engine, slice_], namespace)
        for t in threads:
            t.start()

        def reported() -> float:
            notes = crds.get("em", "default", namespace)["metadata"].get("annotations") or {}
            reports = [GatewayReport.model_validate_json(v) for k, v in notes.items() if k.startswith(REPORT_PREFIX)]
            return max((r.engine_load.get("auto", 0.0) for r in reports), default=0.0)

        # The gateway has nothing in flight itself: the engine's count alone makes its report due.
        wait_until(lambda: reported() >= 5, 30, "the engine's own count of 5 in the gateway's report")
        assert reported() == 5
    finally:
        gateway.stop()
        sim.stop()
        host.delete()

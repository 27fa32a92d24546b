"""The operator as a real process against the real control plane: workloads, scheduling, status,
exclusive mode switches (also across an operator restart), garbage collection, bad specs."""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from kubernetes import client, config, watch

from tests.support.cluster import Cluster, wait_until
from tests.support.manifests import EXAMPLES, engine, example_docs
from tests.support.processes import Process

pytestmark = pytest.mark.integration


def example(name: str) -> dict[str, Any]:
    for docs in example_docs().values():
        for d in docs:
            if d["metadata"]["name"] == name and d["kind"] != "Secret":
                return copy.deepcopy(d)
    raise KeyError(name)


def small(name: str, family: str, replicas: int = 1, **spec: Any) -> dict[str, Any]:
    """An engine with no model cache (no claim to bind), for the scenarios below."""
    sources = {"vllm": "Qwen/Qwen2.5-7B-Instruct", "llamacpp": "/models/qwen2.5-7b-q4_k_m.gguf",
               "ollama": "qwen2.5:7b", "sglang": "Qwen/Qwen2.5-7B-Instruct"}  # fmt: skip
    doc = engine(engine=family, model={"source": sources[family], "servedName": name}, replicas=replicas, **spec)
    doc["metadata"] = {"name": name}
    return doc


def status(cluster: Cluster, kind: str, name: str, ns: str) -> dict[str, Any]:
    return cluster.get(kind, name, ns).get("status") or {}


def wait_phase(cluster: Cluster, kind: str, name: str, ns: str, phase: str, timeout: float = 60) -> dict[str, Any]:
    """Wait for `kind/name` to reach `phase`; on timeout the error shows its last status and the
    namespace's pods, so that a failure in CI says where the operator (or the cluster) stopped."""
    try:
        return wait_until(  # type: ignore[no-any-return]
            lambda: (s := status(cluster, kind, name, ns)).get("phase") == phase and s, timeout,
            f"{kind} {name} {phase}",
        )  # fmt: skip
    except AssertionError as err:
        last = status(cluster, kind, name, ns)
        pods = cluster.kubectl("get", "pods", "-o", "wide", namespace=ns, check=False).stdout
        raise AssertionError(f"{err}\nlast status: {last}\npods:\n{pods}") from None


def condition(st: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in st.get("conditions", []) if c["type"] == kind)


def test_engine_gets_deployment_service_pods_on_gpus_and_ready(
    operator: Process, cluster: Cluster, namespace: str
) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(EXAMPLES / "vllm-llama-3.1-70b-tp2.yaml"), namespace=namespace)
    st = wait_phase(cluster, "ie", "llama-3-1-70b", namespace, "Ready")
    assert st["ready"] == "1/1" and st["active"] is True
    assert st["endpoint"] == f"http://llama-3-1-70b.{namespace}.svc:8000/v1"
    assert condition(st, "ModelFits")["status"] == "True"
    assert condition(st, "Scheduled")["status"] == "True"

    deploy = cluster.get("deployment", "llama-3-1-70b", namespace)
    c = deploy["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][c["args"].index("--tensor-parallel-size") + 1] == "2"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert deploy["metadata"]["ownerReferences"][0]["name"] == "llama-3-1-70b"
    shown = json.loads(cluster.kubectl("get", "deploy", "llama-3-1-70b", "-o", "json", "--show-managed-fields",
                                       namespace=namespace).stdout)  # fmt: skip
    managers = {m["manager"]: m["operation"] for m in shown["metadata"]["managedFields"]}
    assert managers["roundhouse"] == "Apply"
    svc = cluster.get("service", "llama-3-1-70b", namespace)
    assert svc["spec"]["ports"][0]["port"] == 8000
    assert svc["spec"]["selector"] == {"roundhouse.dev/engine": "llama-3-1-70b"}
    pods = cluster.list("pods", namespace, "roundhouse.dev/engine=llama-3-1-70b")
    assert [p["spec"]["nodeName"].startswith("gpu-node-") for p in pods] == [True]
    assert cluster.get("pvc", "llama-3-1-70b-models", namespace)["status"]["phase"] == "Bound"
    lines = cluster.kubectl("get", "ie", namespace=namespace).stdout.splitlines()
    assert lines[1].split()[:7] == ["llama-3-1-70b", "vllm", "llama-3.1-70b-instruct", "1/1", "1", "Ready", "true"]


def test_spec_change_rolls_and_reconcile_is_idempotent(operator: Process, cluster: Cluster, namespace: str) -> None:
    cluster.apply(small("q", "vllm", vllm={"maxModelLen": 4096}), namespace)
    wait_phase(cluster, "ie", "q", namespace, "Ready")
    before = cluster.get("deployment", "q", namespace)
    cluster.kubectl("label", "ie", "q", "touched=yes", namespace=namespace)  # an event, no spec change
    time.sleep(2)
    assert (
        cluster.get("deployment", "q", namespace)["metadata"]["resourceVersion"]
        == before["metadata"]["resourceVersion"]
    )
    cluster.kubectl(
        "patch", "ie", "q", "--type=merge", "-p", '{"spec":{"vllm":{"maxModelLen":8192}}}', namespace=namespace
    )

    def rolled() -> bool:
        d = cluster.get("deployment", "q", namespace)
        a = d["spec"]["template"]["spec"]["containers"][0]["args"]
        return (
            a[a.index("--max-model-len") + 1] == "8192"
            and d["metadata"]["generation"] > before["metadata"]["generation"]
        )

    wait_until(rolled, 30, "Deployment rolled with --max-model-len 8192")
    cluster.kubectl("scale", "ie", "q", "--replicas=3", namespace=namespace)
    wait_until(lambda: cluster.get("deployment", "q", namespace)["spec"]["replicas"] == 3, 30, "scaled to 3")
    assert wait_phase(cluster, "ie", "q", namespace, "Ready")["ready"] == "3/3"


def test_more_gpus_than_any_node_is_not_scheduled_with_the_reason(
    operator: Process, cluster: Cluster, namespace: str
) -> None:
    cluster.apply(small("huge", "vllm", gpus=16, vllm={"tensorParallelSize": 16}), namespace)

    def unscheduled() -> dict[str, Any] | None:
        st = status(cluster, "ie", "huge", namespace)
        return st if st and condition(st, "Scheduled")["status"] == "False" else None

    st = wait_until(unscheduled, 60, "Scheduled=False")
    assert st["phase"] == "Pending"
    assert "Insufficient nvidia.com/gpu" in condition(st, "Scheduled")["message"]
    events = cluster.list("events", namespace)
    assert any(e["reason"] == "Unschedulable" and e["involvedObject"]["kind"] == "InferenceEngine" for e in events)


@contextmanager
def pod_watch(cluster: Cluster, namespace: str) -> Iterator[list[tuple[float, str, str, str]]]:
    """Record (time, event type, family, pod) for every pod event in the namespace, in order."""
    api = client.CoreV1Api(config.new_client_from_config(config_file=str(cluster.kubeconfig)))
    seen: list[tuple[float, str, str, str]] = []
    w = watch.Watch()

    stopped = threading.Event()

    def run() -> None:
        try:
            for ev in w.stream(api.list_namespaced_pod, namespace, timeout_seconds=120):
                pod = ev["object"]
                family = (pod.metadata.labels or {}).get("roundhouse.dev/family", "")
                seen.append((time.monotonic(), ev["type"], family, pod.metadata.name))
        except Exception:
            if not stopped.is_set():
                raise

    t = threading.Thread(target=run, daemon=True)
    t.start()
    time.sleep(0.5)
    try:
        yield seen
    finally:
        stopped.set()
        w.stop()


def assert_outgoing_gone_before_incoming(seen: list[tuple[float, str, str, str]], old: str, new: str) -> None:
    last_old_delete = max(i for i, e in enumerate(seen) if e[1] == "DELETED" and e[2] == old)
    first_new = min(i for i, e in enumerate(seen) if e[1] == "ADDED" and e[2] == new)
    assert last_old_delete < first_new, f"{new} pod created before the last {old} pod was gone: {seen}"


def setup_two_families(cluster: Cluster, ns: str, drain: int) -> None:
    mode = {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "EngineMode", "metadata": {"name": "default"},
            "spec": {"mode": "vllm", "switchPolicy": {"drainSeconds": drain}}}  # fmt: skip
    cluster.apply([mode, small("v1", "vllm", replicas=2), small("v2", "vllm"), small("o1", "ollama", replicas=2)], ns)
    wait_phase(cluster, "em", "default", ns, "Ready")
    assert wait_phase(cluster, "ie", "o1", ns, "Standby")["active"] is False
    assert len(cluster.list("pods", ns, "roundhouse.dev/family=vllm")) == 3


def test_switch_vllm_to_ollama_is_exclusive(operator: Process, cluster: Cluster, namespace: str) -> None:
    setup_two_families(cluster, namespace, drain=2)
    with pod_watch(cluster, namespace) as seen:
        t0 = time.monotonic()
        cluster.kubectl("patch", "enginemode", "default", "--type", "merge", "-p", '{"spec":{"mode":"ollama"}}',
                        namespace=namespace)  # fmt: skip
        switching = wait_phase(cluster, "em", "default", namespace, "Switching", 10)
        assert switching["activeMode"] == "vllm"
        done = wait_phase(cluster, "em", "default", namespace, "Ready", 60)
        elapsed = time.monotonic() - t0
        wait_until(
            lambda: len(cluster.list("pods", namespace, "roundhouse.dev/family=ollama")) == 2, 30, "2 ollama pods"
        )
    assert done["activeMode"] == "ollama" and done["previousMode"] == "vllm"
    assert 2 <= done["lastSwitchSeconds"] <= elapsed + 1  # the 2 s drain is honoured
    assert cluster.list("pods", namespace, "roundhouse.dev/family=vllm") == []
    assert_outgoing_gone_before_incoming(seen, "vllm", "ollama")
    assert wait_phase(cluster, "ie", "v1", namespace, "Standby")["active"] is False
    assert wait_phase(cluster, "ie", "o1", namespace, "Ready")["ready"] == "2/2"
    reasons = [e["reason"] for e in cluster.list("events", namespace) if e["involvedObject"]["kind"] == "EngineMode"]
    assert "SwitchStarted" in reasons and "SwitchCompleted" in reasons


def test_operator_restarted_mid_switch_finishes_it(operator: Process, cluster: Cluster, namespace: str) -> None:
    setup_two_families(cluster, namespace, drain=4)
    with pod_watch(cluster, namespace) as seen:
        cluster.kubectl("patch", "enginemode", "default", "--type", "merge", "-p", '{"spec":{"mode":"ollama"}}',
                        namespace=namespace)  # fmt: skip
        wait_phase(cluster, "em", "default", namespace, "Switching", 10)
        operator.kill()
        assert len(cluster.list("pods", namespace, "roundhouse.dev/family=vllm")) == 3  # still draining
        time.sleep(5)  # the drain deadline passes while no operator runs
        operator.start()
        done = wait_phase(cluster, "em", "default", namespace, "Ready", 60)
        wait_until(
            lambda: len(cluster.list("pods", namespace, "roundhouse.dev/family=ollama")) == 2, 30, "2 ollama pods"
        )
    assert done["activeMode"] == "ollama"
    assert cluster.list("pods", namespace, "roundhouse.dev/family=vllm") == []
    assert_outgoing_gone_before_incoming(seen, "vllm", "ollama")


def test_deleting_an_engine_garbage_collects_its_objects(operator: Process, cluster: Cluster, namespace: str) -> None:
    cluster.apply(small("gone", "llamacpp"), namespace)
    wait_phase(cluster, "ie", "gone", namespace, "Ready")
    cluster.kubectl("delete", "ie", "gone", namespace=namespace)

    def collected() -> bool:
        left = [
            cluster.kubectl("get", k, "gone", namespace=namespace, check=False).returncode for k in ("deploy", "svc")
        ]
        return left == [1, 1] and not cluster.list("pods", namespace, "roundhouse.dev/engine=gone")

    wait_until(collected, 60, "Deployment, Service and pods garbage-collected")


def test_bad_spec_is_reported_not_retried(operator: Process, cluster: Cluster, namespace: str) -> None:
    # Valid for the schema, but multi-node vLLM needs LeaderWorkerSet, which the operator does not drive.
    bad = small("multi", "vllm", gpus=8, vllm={"tensorParallelSize": 8, "pipelineParallelSize": 2, "nodes": 2})
    cluster.apply(bad, namespace)
    st = wait_phase(cluster, "ie", "multi", namespace, "Failed")
    cond = condition(st, "ConfigValid")
    assert cond["status"] == "False" and "LeaderWorkerSet" in cond["message"]
    assert cluster.kubectl("get", "deploy", "multi", namespace=namespace, check=False).returncode != 0
    events = [e for e in cluster.list("events", namespace) if e["reason"] == "InvalidSpec"]
    assert len(events) == 1 and events[0]["type"] == "Warning"
    time.sleep(3)
    assert len([e for e in cluster.list("events", namespace) if e["reason"] == "InvalidSpec"]) == 1  # no retry storm
    assert operator.healthy()
    cluster.apply(small("fine", "vllm"), namespace)
    wait_phase(cluster, "ie", "fine", namespace, "Ready")


def test_metrics_count_reconciles(operator: Process, cluster: Cluster, namespace: str) -> None:
    cluster.apply(small("m", "ollama"), namespace)
    wait_phase(cluster, "ie", "m", namespace, "Ready")
    text = httpx.get(operator.metrics_url).text  # type: ignore[attr-defined]
    assert 'roundhouse_operator_reconciles_total{result="ok"}' in text
    assert 'roundhouse_operator_applies_total{kind="Deployment"}' in text
    assert "roundhouse_operator_engine_phase_transitions_total" in text
    assert json.loads(json.dumps(status(cluster, "ie", "m", namespace)))["phase"] == "Ready"


def test_auto_mode_that_cannot_fit_everything_says_which_and_why(
    operator: Process, cluster: Cluster, namespace: str
) -> None:
    # Two 8-GPU nodes: three 8-GPU engines cannot all run.
    cluster.wait_for_free_gpus(namespace)
    mode = {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "EngineMode", "metadata": {"name": "default"},
            "spec": {"mode": "auto", "switchPolicy": {"drainSeconds": 0}}}  # fmt: skip
    big = [small(n, f, gpus=8, **({"vllm": {"tensorParallelSize": 8}} if f == "vllm" else {}))
           for n, f in (("a", "vllm"), ("b", "llamacpp"), ("c", "ollama"))]  # fmt: skip
    cluster.apply([mode, *big], namespace)

    def settled() -> dict[str, Any] | None:
        # Degraded is reported as soon as one engine is unschedulable, while the two that fit may
        # still be Starting; the settled state is two Ready and one Pending. An engine the operator
        # has not reconciled yet is listed without a phase.
        s = status(cluster, "em", "default", namespace)
        phases = sorted(e.get("phase") or "" for e in s.get("engines", []))
        return s if s.get("phase") == "Degraded" and phases == ["Pending", "Ready", "Ready"] else None

    st = wait_until(settled, 90, "EngineMode Degraded with two engines Ready and one Pending")
    assert "cannot fit every engine" in st["message"] and "Insufficient nvidia.com/gpu" in st["message"]
    phases = {e["name"]: e["phase"] for e in st["engines"]}
    stuck = next(n for n, p in phases.items() if p == "Pending")
    assert f"{stuck}: " in st["message"]


def test_external_engine_is_probed_with_its_key(operator: Process, cluster: Cluster, namespace: str) -> None:
    # Nothing listens on this port: the probe must fail and say so; no workload is created.
    doc = engine(engine="external", model={"source": "gpt-4o-mini", "servedName": "gpt-4o-mini"},
                 external={"baseURL": "http://127.0.0.1:9/v1"})  # fmt: skip
    doc["metadata"] = {"name": "ext"}
    cluster.apply(doc, namespace)
    st = wait_phase(cluster, "ie", "ext", namespace, "Failed", 30)
    assert "http://127.0.0.1:9/v1/models unreachable" in st["message"]
    assert condition(st, "Scheduled")["reason"] == "NoWorkload"
    assert cluster.kubectl("get", "deploy", "ext", namespace=namespace, check=False).returncode != 0

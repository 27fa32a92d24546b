"""The local control plane schedules GPU workloads like a real cluster: the scheduler places pods on
the simulated GPU nodes and kwok runs them; an impossible request stays Pending with the reason."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.cluster import Cluster, wait_until

pytestmark = pytest.mark.integration

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def gpu_deployment(name: str, gpus: int, replicas: int = 1, tolerate: bool = True) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "containers": [{
            "name": "engine", "image": "vllm/vllm-openai:v0.11.0",
            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}, "requests": {"nvidia.com/gpu": str(gpus)}},
        }],
    }  # fmt: skip
    if tolerate:
        pod["tolerations"] = [GPU_TOLERATION]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod},
        },
    }


def pods(cluster: Cluster, namespace: str, app: str) -> list[dict[str, Any]]:
    return cluster.list("pods", namespace, f"app={app}")


def test_gpu_pods_are_scheduled_on_gpu_nodes_and_run(cluster: Cluster, namespace: str) -> None:
    cluster.wait_for_free_gpus(namespace)
    cluster.apply(gpu_deployment("tp4", gpus=4, replicas=3), namespace)

    def running() -> list[dict[str, Any]]:
        ps = pods(cluster, namespace, "tp4")
        return ps if len(ps) == 3 and all(p["status"].get("phase") == "Running" for p in ps) else []

    placed = wait_until(running, 60, "3 GPU pods Running")
    assert all(p["spec"]["nodeName"].startswith("gpu-node-") for p in placed)
    # 3 pods x 4 GPUs cannot share one 8-GPU node: the scheduler really counted GPUs.
    assert len({p["spec"]["nodeName"] for p in placed}) == 2
    deploy = wait_until(
        lambda: (d := cluster.get("deployment", "tp4", namespace))["status"].get("readyReplicas") == 3 and d,
        60, "Deployment ready",
    )  # fmt: skip
    assert deploy["status"]["availableReplicas"] == 3


def unschedulable_message(cluster: Cluster, namespace: str, app: str) -> str:
    for pod in pods(cluster, namespace, app):
        for cond in pod["status"].get("conditions", []):
            if cond["type"] == "PodScheduled" and cond["status"] == "False":
                assert cond["reason"] == "Unschedulable"
                return str(cond["message"])
    return ""


def test_more_gpus_than_any_node_stays_pending_with_the_schedulers_reason(cluster: Cluster, namespace: str) -> None:
    cluster.apply(gpu_deployment("too-big", gpus=9), namespace)
    message = wait_until(lambda: unschedulable_message(cluster, namespace, "too-big"), 60, "PodScheduled=False")
    assert "Insufficient nvidia.com/gpu" in message
    assert all(p["status"]["phase"] == "Pending" for p in pods(cluster, namespace, "too-big"))


def test_gpu_pod_without_toleration_is_kept_off_tainted_gpu_nodes(cluster: Cluster, namespace: str) -> None:
    cluster.apply(gpu_deployment("no-toleration", gpus=1, tolerate=False), namespace)
    message = wait_until(lambda: unschedulable_message(cluster, namespace, "no-toleration"), 60, "PodScheduled=False")
    assert "untolerated taint" in message and "nvidia.com/gpu" in message

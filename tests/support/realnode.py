"""Real nodes of the local cluster (hack/local-cluster up --real-nodes N): a kubelet with containerd
on this machine, images built by hack/build-images.py. Helpers to find them and run pods there."""

from __future__ import annotations

import importlib.util
import json
import sys
import urllib.request
from functools import cache
from types import ModuleType
from typing import Any

from tests.support.cluster import REPO, Cluster, wait_until

REAL_NODE_LABEL = "roundhouse.dev/real-node"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
# `up --isolate-real-nodes` taints real nodes with their label: pods meant for them tolerate it.
REAL_NODE_TOLERATION = {"key": REAL_NODE_LABEL, "operator": "Exists", "effect": "NoSchedule"}


@cache
def build_images() -> ModuleType:
    """hack/build-images.py as a module (image names, recipes)."""
    spec = importlib.util.spec_from_file_location("build_images", REPO / "hack" / "build-images.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_images"] = module
    spec.loader.exec_module(module)
    return module


def image(name: str) -> str:
    """The first tag of one of our images (pause, llama-server, ollama, roundhouse, vllm)."""
    return str(build_images().NAMES[name][0])


def real_nodes(cluster: Cluster) -> list[dict[str, Any]]:
    return cluster.list("nodes", namespace="", selector=f"{REAL_NODE_LABEL}=true") if cluster else []


def node_images(node: dict[str, Any]) -> set[str]:
    """Every name of every image the node's kubelet reports (containerd's full names)."""
    return {n for i in node["status"].get("images", []) for n in i.get("names", [])}


def has_image(node: dict[str, Any], name: str) -> bool:
    full = build_images().full_name(image(name))
    return full in node_images(node)


def pod(
    name: str,
    image: str,
    *,
    node: str | None = None,
    command: list[str] | None = None,
    args: list[str] | None = None,
    port: int | None = None,
    ready_path: str | None = None,
    gpus: int = 0,
    pull: str = "Never",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Pod for the real node: tolerates the GPU taint and the real-node taint; `node` pins it by hostname."""
    c: dict[str, Any] = {"name": "main", "image": image, "imagePullPolicy": pull}
    if command:
        c["command"] = command
    if args:
        c["args"] = args
    if port:
        c["ports"] = [{"containerPort": port}]
    if ready_path and port:
        c["readinessProbe"] = {
            "httpGet": {"path": ready_path, "port": port},
            "periodSeconds": 1,
            "failureThreshold": 120,
        }
    if gpus:
        c["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}, "requests": {"nvidia.com/gpu": str(gpus)}}
    spec: dict[str, Any] = {
        "containers": [c],
        "tolerations": [GPU_TOLERATION, REAL_NODE_TOLERATION],
        "terminationGracePeriodSeconds": 1,
    }
    if node:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}}, "spec": spec}
    for key, value in (extra or {}).items():
        doc["spec"][key] = value
    return doc


def condition(p: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in p.get("status", {}).get("conditions", []) if c["type"] == kind), {})


def wait_ready(cluster: Cluster, namespace: str, name: str, timeout: float = 120) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        p = cluster.get("pod", name, namespace)
        return p if condition(p, "Ready").get("status") == "True" else None

    try:
        return wait_until(ready, timeout, f"pod {name} Ready", interval=0.5)  # type: ignore[no-any-return]
    except AssertionError as err:
        describe = cluster.kubectl("describe", "pod", name, namespace=namespace, check=False).stdout
        raise AssertionError(f"{err}\n{describe[-3000:]}") from None


def waiting_reason(p: dict[str, Any]) -> str:
    for s in p.get("status", {}).get("containerStatuses", []):
        if "waiting" in s.get("state", {}):
            return str(s["state"]["waiting"].get("reason", ""))
    return ""


def http_get(url: str, timeout: float = 5) -> tuple[int, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        body = r.read()
        return r.status, json.loads(body) if body[:1] in (b"{", b"[") else body.decode()

"""The Helm chart on the local cluster's real node, for the e2e tier and the demo: the release, the
engines' model volume (the tiny GGUF, and Ollama models made from it), and clean-up."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.support import engines, tinygguf, tools
from tests.support.cluster import REPO, Cluster

GPU_TOLERATION = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def helm(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tools.path("helm"), "--kubeconfig", str(cluster.kubeconfig), *args], capture_output=True,
                          text=True, check=check, timeout=300)  # fmt: skip


def write_models(root: Path, ollama_tags: list[str], log_dir: Path) -> Path:
    """A host directory engine pods mount: tiny.gguf, and an Ollama model directory holding it under
    each tag (made by the real Ollama's `ollama create`), so no pod needs a registry."""
    root.mkdir(parents=True, exist_ok=True)
    gguf = tinygguf.write(root / "tiny.gguf", context_length=4096)
    server = engines.ollama(engines.ollama_container(), root / "ollama", log_dir, name="ollama-seed").start()
    try:
        for tag in ollama_tags:
            engines.ollama_create(server, tag, gguf)
    finally:
        server.stop()
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    return root


def models_volume(cluster: Cluster, namespace: str, name: str, path: Path) -> None:
    """A PersistentVolume on `path` (hostPath: the real node is this machine) bound to claim `name`."""
    cluster.kubectl("create", "namespace", namespace, check=False)
    items = [
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{namespace}-{name}"},
         "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                  "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(path)},
                  "claimRef": {"namespace": namespace, "name": name}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": namespace},
         "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": f"{namespace}-{name}",
                  "resources": {"requests": {"storage": "1Gi"}}}},
    ]  # fmt: skip
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))


def install(cluster: Cluster, release: str, namespace: str, api_key: str, admin_key: str, work: Path) -> None:
    """The chart in `namespace`: one gateway replica, the operator watching only `namespace`, both
    tolerating the GPU taint (the one node is a GPU node), keys from Secrets made here."""
    cluster.kubectl("create", "namespace", namespace, check=False)
    for secret, key in ((f"{release}-api-keys", api_key), (f"{release}-admin-keys", admin_key)):
        cluster.kubectl("create", "secret", "generic", secret, f"--from-literal=keys={key}", namespace=namespace,
                        check=False)  # fmt: skip
    keys = {"apiKeys": {"existingSecret": f"{release}-api-keys"}, "admin": {"existingSecret": f"{release}-admin-keys"}}
    gateway = {"replicas": 1, "tolerations": GPU_TOLERATION, "podDisruptionBudget": {"enabled": False}, **keys}
    values: dict[str, Any] = {"operator": {"tolerations": GPU_TOLERATION, "watchNamespaces": [namespace]},
                              "gateway": gateway}  # fmt: skip
    work.mkdir(parents=True, exist_ok=True)
    values_file = work / f"{release}-values.json"
    values_file.write_text(json.dumps(values))
    helm(cluster, "upgrade", "--install", release, str(REPO / "charts" / "roundhouse"), "-n", namespace,
         "--skip-crds", "-f", str(values_file))  # fmt: skip
    for part in ("operator", "gateway"):
        cluster.kubectl("rollout", "status", f"deployment/{fullname(release)}-{part}", "--timeout=110s",
                        namespace=namespace)  # fmt: skip


def fullname(release: str) -> str:
    """The chart's name for the release's objects (see _helpers.tpl)."""
    return release if "roundhouse" in release else f"{release}-roundhouse"


def gateway_url(cluster: Cluster, release: str, namespace: str) -> str:
    """The gateway Service's ClusterIP: this machine reaches it through the real node's kube-proxy."""
    svc = cluster.get("service", f"{fullname(release)}-gateway", namespace)
    return f"http://{svc['spec']['clusterIP']}:{svc['spec']['ports'][0]['port']}"


def uninstall(cluster: Cluster, release: str, namespace: str) -> None:
    cluster.kubectl("delete", "ie,em", "--all", namespace=namespace, check=False)
    helm(cluster, "uninstall", release, "-n", namespace, check=False)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    for pv in cluster.list("pv", namespace=""):
        if pv["metadata"]["name"].startswith(f"{namespace}-"):
            cluster.kubectl("delete", "pv", pv["metadata"]["name"], "--wait=false", check=False)

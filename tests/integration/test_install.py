"""install.yaml and the chart's RBAC on the real API server; operator and gateway as their ServiceAccounts."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import processes
from tests.support.cluster import Cluster, token_kubeconfig, wait_until
from tests.support.manifests import REPO

pytestmark = pytest.mark.integration
NS = "roundhouse-system"
OPERATOR = f"system:serviceaccount:{NS}:roundhouse-operator"
GATEWAY = f"system:serviceaccount:{NS}:roundhouse-gateway"
ARTIFACTS = REPO / "artifacts" / "install"


@pytest.fixture(scope="module")
def installed(crds: Cluster) -> Cluster:
    crds.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}))  # fmt: skip
    for name in ("roundhouse-api-keys", "roundhouse-admin-keys"):
        crds.kubectl("create", "secret", "generic", name, "--from-literal=keys=k-" + name, namespace=NS, check=False)
    out = crds.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "manifests" / "install.yaml"))
    assert "deployment.apps/roundhouse-gateway serverside-applied" in out.stdout
    return crds


def can(cluster: Cluster, who: str, verb: str, resource: str, namespace: str | None = None) -> bool:
    resource, _, sub = resource.partition("/")
    args = ["auth", "can-i", verb, resource, f"--as={who}"] + ([f"--subresource={sub}"] if sub else [])
    args += ["-n", namespace] if namespace else ["--all-namespaces"]
    return cluster.kubectl(*args, check=False).stdout.strip() == "yes"


OPERATOR_ALLOWED = [
    ("list", "inferenceengines.roundhouse.dev", None), ("watch", "enginemodes.roundhouse.dev", None),
    ("patch", "inferenceengines.roundhouse.dev/status", "team-a"), ("patch", "enginemodes.roundhouse.dev/status", "x"),
    ("create", "deployments.apps", "team-a"), ("patch", "deployments.apps", "team-b"), ("delete", "services", "x"),
    ("create", "persistentvolumeclaims", "x"), ("list", "pods", None), ("list", "nodes", None),
    ("create", "events", "x"), ("list", "customresourcedefinitions.apiextensions.k8s.io", None),
    ("update", "leases.coordination.k8s.io", NS), ("create", "leases.coordination.k8s.io", NS),
]  # fmt: skip
OPERATOR_DENIED = [
    ("get", "secrets", "x"), ("list", "secrets", None), ("delete", "nodes", None),
    ("patch", "inferenceengines.roundhouse.dev", "x"), ("create", "pods", "x"), ("create", "clusterrolebindings", None),
    ("delete", "namespaces", None), ("update", "customresourcedefinitions.apiextensions.k8s.io", None),
    ("update", "leases.coordination.k8s.io", "team-a"), ("delete", "leases.coordination.k8s.io", NS),
]  # fmt: skip
GATEWAY_ALLOWED = [
    ("list", "inferenceengines.roundhouse.dev", NS), ("watch", "enginemodes.roundhouse.dev", NS),
    ("watch", "endpointslices.discovery.k8s.io", NS), ("patch", "enginemodes.roundhouse.dev", NS),
    ("list", "events", NS),  # the admin page's Budget view: the EngineMode's swaps
]  # fmt: skip
GATEWAY_DENIED = [
    ("get", "secrets", NS), ("list", "secrets", NS), ("list", "inferenceengines.roundhouse.dev", "other"),
    ("patch", "inferenceengines.roundhouse.dev", NS), ("delete", "enginemodes.roundhouse.dev", NS),
    ("create", "deployments.apps", NS), ("patch", "enginemodes.roundhouse.dev/status", NS), ("list", "nodes", None),
    ("create", "events", NS), ("list", "events", "other"),
]  # fmt: skip


@pytest.mark.parametrize(("who", "verb", "resource", "ns", "allowed"), [
    *[(OPERATOR, *c, True) for c in OPERATOR_ALLOWED], *[(OPERATOR, *c, False) for c in OPERATOR_DENIED],
    *[(GATEWAY, *c, True) for c in GATEWAY_ALLOWED], *[(GATEWAY, *c, False) for c in GATEWAY_DENIED],
], ids=lambda v: str(v).rsplit(":", 1)[-1] if isinstance(v, str) else str(v))  # fmt: skip
def test_rbac_is_least_privilege(
    installed: Cluster, who: str, verb: str, resource: str, ns: str | None, allowed: bool
) -> None:
    assert can(installed, who, verb, resource, ns) is allowed


def test_namespaced_operator_cannot_touch_other_namespaces(installed: Cluster, tmp_path: Path) -> None:
    helm = next(Path(d) / "helm" for d in installed.bin_dirs if "helm" in d)
    rendered = subprocess.run(
        [str(helm), "template", "scoped", str(REPO / "charts" / "roundhouse"), "-n", NS, "--set",
         "operator.watchNamespaces={team-a}", "--set", "gateway.enabled=false"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    installed.kubectl("create", "namespace", "team-a", check=False)
    installed.kubectl("apply", "--server-side", "-f", "-", input=rendered)
    who = f"system:serviceaccount:{NS}:scoped-roundhouse-operator"
    assert can(installed, who, "create", "deployments.apps", "team-a")
    assert not can(installed, who, "create", "deployments.apps", "team-b")
    assert not can(installed, who, "list", "inferenceengines.roundhouse.dev", None)
    assert can(installed, who, "list", "nodes", None)  # GPU memory for ModelFits is cluster-wide


@pytest.fixture
def sa_processes(installed: Cluster, tmp_path: Path) -> Iterator[dict[str, Any]]:
    op_cfg = token_kubeconfig(installed, NS, "roundhouse-operator", tmp_path / "operator.kubeconfig")
    gw_cfg = token_kubeconfig(installed, NS, "roundhouse-gateway", tmp_path / "gateway.kubeconfig")
    operator = processes.operator({**os.environ, "KUBECONFIG": str(op_cfg)}, ARTIFACTS, namespaces=[NS]).start()
    sim = processes.enginesim("vllm", "sa", ["m"], ARTIFACTS).start()
    gateway = processes.cluster_gateway(NS, gw_cfg, tmp_path, ARTIFACTS, ["k"], ["a"], name="gateway-sa").start()
    yield {"operator": operator, "gateway": gateway, "sim": sim, "url": gateway.url}  # type: ignore[attr-defined]
    for p in (operator, gateway, sim):
        p.stop()
    # Free the GPU the engine holds; the garbage collector removes its Deployment.
    installed.kubectl("delete", "ie,em", "--all", namespace=NS)


def test_operator_and_gateway_work_as_their_service_accounts(installed: Cluster, sa_processes: dict[str, Any]) -> None:
    engine = {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine", "metadata": {"name": "sa-engine"},
              "spec": {"engine": "vllm", "model": {"source": "m", "servedName": "m"}}}  # fmt: skip
    mode = {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "EngineMode", "metadata": {"name": "default"},
            "spec": {"mode": "vllm", "switchPolicy": {"drainSeconds": 0}}}  # fmt: skip
    installed.apply([engine, mode], NS)
    # The operator, with only its RBAC, renders, applies and reports status.
    wait_until(lambda: (installed.get("ie", "sa-engine", NS).get("status") or {}).get("phase") == "Ready", 60,
               "engine Ready via the operator's ServiceAccount")  # fmt: skip
    assert installed.get("deployment", "sa-engine", NS)["spec"]["replicas"] == 1
    # The gateway, with only its RBAC, watches and (admin) patches the EngineMode.
    url = sa_processes["url"]
    wait_until(lambda: httpx.get(url + "/readyz").status_code == 200, 30, "gateway synced")
    r = httpx.put(url + "/admin/engine-mode", json={"mode": "ollama"}, headers={"Authorization": "Bearer a"})
    assert r.status_code == 200, r.text
    assert installed.get("em", "default", NS)["spec"]["mode"] == "ollama"
    wait_until(lambda: (installed.get("em", "default", NS).get("status") or {}).get("activeMode") == "ollama", 60,
               "the operator completes the switch")  # fmt: skip
    for name in ("operator", "gateway"):
        assert "Forbidden" not in sa_processes[name].log_path.read_text()

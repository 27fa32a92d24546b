"""A real node in the local cluster: a kubelet built from the same Kubernetes module, Debian's containerd,
runc and CNI bridge, images built here without Docker (hack/build-images.py). Pods really run: probes
pass or fail, the scheduler counts the node's advertised GPUs, and pods reach the API server through
the `kubernetes` Service as the operator and the gateway do in a cluster.

Part of the e2e tier (`make test-e2e`), whose cluster has one real node; a missing node or image
fails the run with the command that provides it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import tinygguf
from tests.support.cluster import Cluster, wait_until
from tests.support.realnode import (
    REAL_NODE_LABEL,
    condition,
    has_image,
    http_get,
    image,
    pod,
    real_nodes,
    wait_ready,
    waiting_reason,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def node(cluster: Cluster) -> dict[str, Any]:
    nodes = real_nodes(cluster)
    if not nodes:
        pytest.fail("no real node: start the cluster with `hack/local-cluster up --real-nodes 1` (root)", pytrace=False)
    return nodes[0]


def need_image(node: dict[str, Any], name: str) -> str:
    if not has_image(node, name):
        pytest.fail(
            f"image {image(name)} is not on {node['metadata']['name']}: hack/build-images.py {name}", pytrace=False
        )
    return image(name)


@pytest.fixture
def gguf_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("gguf")
    d.chmod(0o755)
    tinygguf.write(d / "tiny.gguf")
    (d / "tiny.gguf").chmod(0o644)
    yield d


def test_real_node_advertises_gpus_with_gpu_feature_discovery_labels(node: dict[str, Any]) -> None:
    labels, status = node["metadata"]["labels"], node["status"]
    count = labels["nvidia.com/gpu.count"]
    assert labels["nvidia.com/gpu.present"] == "true" and labels["nvidia.com/gpu.product"]
    assert int(labels["nvidia.com/gpu.memory"]) > 0 and labels["nvidia.com/gpu.family"]
    assert status["capacity"]["nvidia.com/gpu"] == status["allocatable"]["nvidia.com/gpu"] == count
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in status["conditions"])
    assert status["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert has_image(node, "pause")  # the sandbox image, pinned by containerd


@pytest.mark.parametrize("engine", ["llama-server", "ollama", "vllm"])
def test_engine_pod_from_a_built_image_becomes_ready_and_serves_from_its_pod_ip_and_service(
    engine: str, node: dict[str, Any], cluster: Cluster, namespace: str, gguf_dir: Path
) -> None:
    name = node["metadata"]["name"]
    img = need_image(node, engine)
    if engine == "llama-server":
        # The real llama.cpp server (CPU build) serving the tests' tiny GGUF from a hostPath.
        doc = pod("engine", img, node=name, port=8080, ready_path="/health",
                  args=["--model", "/models/tiny.gguf", "--alias", "tiny", "--port", "8080", "--ctx-size", "256"],
                  extra={"volumes": [{"name": "m", "hostPath": {"path": str(gguf_dir)}}]})  # fmt: skip
        doc["spec"]["containers"][0]["volumeMounts"] = [{"name": "m", "mountPath": "/models", "readOnly": True}]
    elif engine == "ollama":  # the real Ollama (CPU build); the model is created in the pod below
        doc = pod("engine", img, node=name, port=11434, ready_path="/api/version", command=["ollama", "serve"],
                  extra={"volumes": [{"name": "m", "hostPath": {"path": str(gguf_dir)}}]})  # fmt: skip
        doc["spec"]["containers"][0]["volumeMounts"] = [{"name": "m", "mountPath": "/models", "readOnly": True}]
    else:  # the vLLM stand-in: the operator's rendered command line, run by the engine simulator
        doc = pod("engine", img, node=name, port=8000, ready_path="/health", command=["vllm", "serve"],
                  args=["tiny", "--served-model-name", "tiny", "--host", "0.0.0.0", "--port", "8000"])  # fmt: skip
    port = doc["spec"]["containers"][0]["ports"][0]["containerPort"]
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "engine"},
           "spec": {"selector": {"app": "engine"}, "ports": [{"port": 80, "targetPort": port}]}}  # fmt: skip
    cluster.apply([doc, svc], namespace)
    ready = wait_ready(cluster, namespace, "engine", timeout=180)
    assert ready["spec"]["nodeName"] == name
    ip = ready["status"]["podIP"]
    assert ip and not ip.startswith("127.")
    if engine == "ollama":  # through the API server's kubelet connection (kubectl exec)
        assert http_get(f"http://{ip}:{port}/api/version")[1] == {"version": "0.17.4"}
        create = "printf 'FROM /models/tiny.gguf\\n' > /tmp/Modelfile && ollama create tiny -f /tmp/Modelfile"
        cluster.kubectl("exec", "-n", namespace, "engine", "--", "sh", "-c", create)
    status, models = http_get(f"http://{ip}:{port}/v1/models")  # from this machine to the pod
    assert status == 200 and "tiny" in [m["id"].removesuffix(":latest") for m in models["data"]]
    cluster_ip = cluster.get("service", "engine", namespace)["spec"]["clusterIP"]
    # kube-proxy's iptables rules take the ClusterIP to the pod.
    status, models = wait_until(lambda: _try_get(f"http://{cluster_ip}/v1/models"), 30, "the Service's ClusterIP")
    assert "tiny" in [m["id"].removesuffix(":latest") for m in models["data"]]


def _try_get(url: str) -> tuple[int, Any] | None:
    try:
        return http_get(url, timeout=2)
    except OSError:
        return None


@pytest.mark.parametrize(("pull", "reasons"), [
    ("Never", {"ErrImageNeverPull"}),
    ("IfNotPresent", {"ErrImagePull", "ImagePullBackOff"}),  # there is no registry to pull from
])  # fmt: skip
def test_image_that_is_not_on_the_node_never_becomes_ready(
    pull: str, reasons: set[str], node: dict[str, Any], cluster: Cluster, namespace: str
) -> None:
    doc = pod("missing", "localhost/roundhouse/does-not-exist:nope", node=node["metadata"]["name"], pull=pull,
              port=8080, ready_path="/health")  # fmt: skip
    cluster.apply(doc, namespace)

    def stuck() -> str:
        return waiting_reason(cluster.get("pod", "missing", namespace))

    reason = wait_until(lambda: stuck() in reasons and stuck(), 90, f"a waiting reason in {reasons}")
    p = cluster.get("pod", "missing", namespace)
    assert reason in reasons
    assert condition(p, "Ready")["status"] == "False" and p["status"]["phase"] == "Pending"
    assert condition(p, "PodScheduled")["status"] == "True"  # scheduled; the kubelet is what refuses


def test_gpu_pods_are_scheduled_onto_the_real_node_and_its_gpus_are_counted(
    node: dict[str, Any], cluster: Cluster, namespace: str
) -> None:
    name, gpus = node["metadata"]["name"], int(node["status"]["allocatable"]["nvidia.com/gpu"])
    img = image("pause")  # any image on the node will do: this is about placement
    cluster.wait_for_free_gpus(namespace)
    select = {"nodeSelector": {REAL_NODE_LABEL: "true"}}
    cluster.apply(pod("all-gpus", img, gpus=gpus, extra=select), namespace)
    running = wait_until(
        lambda: (p := cluster.get("pod", "all-gpus", namespace))["status"].get("phase") == "Running" and p,
        90, "the GPU pod Running",
    )  # fmt: skip
    assert running["spec"]["nodeName"] == name
    # Every advertised GPU is taken: one more GPU does not fit on the real node.
    cluster.apply(pod("one-more", img, gpus=1, extra=select), namespace)

    def unschedulable() -> str:
        c = condition(cluster.get("pod", "one-more", namespace), "PodScheduled")
        return str(c.get("message", "")) if c.get("status") == "False" else ""

    message = wait_until(unschedulable, 60, "PodScheduled=False")
    assert "Insufficient nvidia.com/gpu" in message
    # Without the toleration the GPU taint keeps a pod off the node.
    untolerated = pod("no-toleration", img, extra=select)
    untolerated["spec"]["tolerations"] = []
    cluster.apply(untolerated, namespace)
    c = wait_until(lambda: condition(cluster.get("pod", "no-toleration", namespace), "PodScheduled").get("message"),
                   60, "PodScheduled=False for the pod without toleration")  # fmt: skip
    assert "untolerated taint" in c


def test_pod_reaches_the_api_server_through_the_kubernetes_service_with_in_cluster_config(
    node: dict[str, Any], cluster: Cluster, namespace: str
) -> None:
    """What the operator and the gateway do in a cluster: the kubernetes client's in-cluster config
    (KUBERNETES_SERVICE_HOST, the ServiceAccount's token and CA), with RBAC applied."""
    img = need_image(node, "roundhouse")
    rbac = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "reader"},
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "reader"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
         "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}]},
    ]  # fmt: skip
    script = (
        "import json, os, kubernetes\n"
        "kubernetes.config.load_incluster_config()\n"
        "api = kubernetes.client.CoreV1Api()\n"
        "ns = open('/var/run/secrets/kubernetes.io/serviceaccount/namespace').read()\n"
        "names = sorted(p.metadata.name for p in api.list_namespaced_pod(ns).items)\n"
        "try:\n"
        "    api.list_namespace()\n"
        "    denied = False\n"
        "except kubernetes.client.ApiException as e:\n"
        "    denied = e.status == 403\n"
        "print(json.dumps({'host': os.environ['KUBERNETES_SERVICE_HOST'], 'pods': names, 'denied': denied}))\n"
    )
    doc = pod("client", img, node=node["metadata"]["name"], command=["python", "-c", script],
              extra={"serviceAccountName": "reader", "restartPolicy": "Never"})  # fmt: skip
    cluster.apply([*rbac, doc], namespace)
    done = wait_until(
        lambda: (p := cluster.get("pod", "client", namespace))["status"].get("phase") in ("Succeeded", "Failed") and p,
        120, "the in-cluster client to finish",
    )  # fmt: skip
    logs = cluster.kubectl("logs", "client", namespace=namespace).stdout
    assert done["status"]["phase"] == "Succeeded", logs
    out = json.loads(logs.strip().splitlines()[-1])
    kubernetes_ip = cluster.get("service", "kubernetes", "default")["spec"]["clusterIP"]
    assert out == {"host": kubernetes_ip, "pods": ["client"], "denied": True}

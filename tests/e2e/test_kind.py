"""End to end on kind: the image, the Helm chart, simulator-backed engines, real pods.

Needs a Docker engine and the `kind` binary (`make test-e2e`); skipped with the reason otherwise.
The same scenarios as the integration tier, with the operator and gateway running in the cluster.
pytest-kind is not used: it downloads kind and kubectl from release sites, which this project's
machines cannot reach; a machine with Docker usually has kind installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGE, SIM_IMAGE = "roundhouse:e2e", "roundhouse-enginesim:e2e"
pytestmark = pytest.mark.e2e


def _missing() -> str | None:
    if shutil.which("kind") is None:
        return "kind is not installed (https://kind.sigs.k8s.io); e2e tests need kind and a Docker engine"
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "no Docker engine answers `docker info`; e2e tests need one (the integration tier covers the rest)"
    if shutil.which("helm") is None or shutil.which("kubectl") is None:
        return 'helm and kubectl must be on PATH (eval "$(hack/local-cluster env)" puts the built ones there)'
    return None


if (reason := _missing()) is not None:
    pytest.skip(reason, allow_module_level=True)


def run(*argv: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=input, capture_output=True, text=True, check=check, timeout=900)


@pytest.fixture(scope="module")
def kind_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    name = f"roundhouse-e2e-{uuid.uuid4().hex[:6]}"
    kubeconfig = tmp_path_factory.mktemp("kind") / "kubeconfig"
    run("docker", "build", "-t", IMAGE, str(REPO))
    run("docker", "build", "--target", "enginesim", "-t", SIM_IMAGE, str(REPO))
    run("kind", "create", "cluster", "--name", name, "--kubeconfig", str(kubeconfig), "--wait", "120s")
    try:
        for image in (IMAGE, SIM_IMAGE):
            run("kind", "load", "docker-image", image, "--name", name)
        run("helm", "install", "roundhouse", str(REPO / "charts" / "roundhouse"), "--kubeconfig", str(kubeconfig),
            "-n", "roundhouse-system", "--create-namespace", "--wait", "--timeout", "300s",
            "--set", "image.repository=roundhouse", "--set", "image.tag=e2e", "--set", "image.pullPolicy=Never",
            "--set", "defaultEngineMode.create=true")  # fmt: skip
        yield kubeconfig
    finally:
        run("kind", "delete", "cluster", "--name", name, check=False)


def kubectl(kubeconfig: Path, *args: str, input: str | None = None) -> str:
    return run("kubectl", "--kubeconfig", str(kubeconfig), "-n", "roundhouse-system", *args, input=input).stdout


def sim_engine(name: str, family: str) -> dict[str, Any]:
    """An engine whose pod runs the simulator image (its shims take the engine's own command line)."""
    return {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine", "metadata": {"name": name},
            "spec": {"engine": family, "model": {"source": "m" if family == "ollama" else "org/m", "servedName": "m"},
                     "gpus": 0, "image": SIM_IMAGE, "imagePullPolicy": "Never"}}  # fmt: skip


def test_chart_installs_and_gateway_routes_by_mode(kind_cluster: Path) -> None:
    kubectl(kind_cluster, "apply", "--server-side", "-f", "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List",
                              "items": [sim_engine("v", "vllm"), sim_engine("o", "ollama")]}))  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        items = json.loads(kubectl(kind_cluster, "get", "ie", "-o", "json"))["items"]
        phases = {i["metadata"]["name"]: (i.get("status") or {}).get("phase") for i in items}
        if phases == {"v": "Ready", "o": "Standby"}:
            break
        time.sleep(2)
    else:
        pytest.fail(f"engines not in place: {phases}")
    kubectl(kind_cluster, "patch", "enginemode", "default", "--type", "merge", "-p", '{"spec":{"mode":"ollama"}}')
    kubectl(kind_cluster, "wait", "--for=jsonpath={.status.activeMode}=ollama", "enginemode/default", "--timeout=300s")

"""`make demo` (hack/demo.py --no-wait) runs its whole tour against the local control plane."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.cluster import Cluster
from tests.support.manifests import REPO

pytestmark = pytest.mark.integration


def test_demo_tour_switches_families(cluster: Cluster) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "hack" / "demo.py"), "--no-wait"], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "model='qwen' -> qwen-vllm" in out.replace("\033[1m", "").replace("\033[0m", "")
    after = out.split("[6/7]")[1].replace("\033[1m", "").replace("\033[0m", "")
    assert "model='qwen' -> qwen-ollama" in after and "model='tiny' -> tiny-llama" in after
    assert "Switching" in after and "switch took" in after
    assert "[7/7] Try it yourself" in out and "export KUBECONFIG=" in out
    assert "/ui/ in a browser: admin key admin-demo" in out  # printed once the page answered
    # It cleaned up what it created and left the cluster it found running.
    assert cluster.kubectl("get", "ie", "-o", "name", namespace="roundhouse-system").stdout == ""

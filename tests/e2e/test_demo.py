"""`make demo` (hack/demo.py --no-wait) runs its whole tour on the real node: the chart's pods, the
engines as real pods, the switch, and it cleans up what it installed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.cluster import Cluster
from tests.support.manifests import REPO

pytestmark = pytest.mark.e2e


def test_demo_tour_switches_families_on_real_pods(cluster: Cluster) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "hack" / "demo.py"), "--no-wait"], capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    out = proc.stdout.replace("\033[1m", "").replace("\033[0m", "").replace("\033[2m", "")
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "reusing the running cluster and its real node" in out
    before, after = out.split("[5/7]")
    assert "model='qwen' -> qwen-vllm" in before and "model='tiny' -> tiny-llama" in before
    assert "real-node-0" in before  # the engine pods ran on the real node
    assert "model='qwen' -> qwen-ollama" in after and "model='tiny' -> tiny-llama" in after
    assert "Switching" in after and "switch took" in after
    assert "[7/7] Try it yourself" in out and "export KUBECONFIG=" in out
    assert "/ui/ in a browser: admin key admin-demo" in out  # printed once the page answered
    # It removed what it installed and left the cluster it found running.
    assert "uninstalled the release" in out
    left = cluster.kubectl("get", "ie", "-o", "name", namespace="roundhouse-system", check=False)
    assert left.stdout == ""
    assert cluster.kubectl("get", "--raw", "/readyz").returncode == 0

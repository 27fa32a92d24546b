"""`make demo` (hack/demo.py) runs its whole tour on the real node: the chart's pods, the engines as
real pods, the switch; then it waits for Ctrl-C, and Ctrl-C removes what it installed. (CI's own
`make demo` runs the tour without a terminal, where the demo exits after it by itself.)"""

from __future__ import annotations

import contextlib
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.support.cluster import Cluster
from tests.support.manifests import REPO

pytestmark = pytest.mark.e2e
WAITING = "Press Ctrl-C to stop everything the demo started."


def test_demo_tour_switches_families_on_real_pods_and_ctrl_c_cleans_up(cluster: Cluster) -> None:
    proc = subprocess.Popen([sys.executable, str(REPO / "hack" / "demo.py"), "--wait"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or []], daemon=True).start()
    out, deadline = "", time.monotonic() + 600
    try:
        while WAITING not in out and proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                out += lines.get(timeout=1)
        assert WAITING in out, out[-4000:]
        proc.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends
        assert proc.wait(timeout=180) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.5)
    while not lines.empty():
        out += lines.get()
    out = out.replace("\033[1m", "").replace("\033[0m", "").replace("\033[2m", "")
    assert "reusing the running cluster and its real node" in out
    before, after = out.split("[5/7]")
    assert "model='qwen' -> qwen-vllm" in before and "model='tiny' -> tiny-llama" in before
    assert "real-node-0" in before  # the engine pods ran on the real node
    assert "model='qwen' -> qwen-ollama" in after and "model='tiny' -> tiny-llama" in after
    assert "Switching" in after and "switch took" in after
    assert "[7/7] Try it yourself" in out and "export KUBECONFIG=" in out
    assert "/ui/ in a browser: admin key admin-demo" in out  # printed once the page answered
    # Ctrl-C removed what it installed and left the cluster it found running.
    assert "stopping the demo" in out.split(WAITING)[1] and "uninstalled the release" in out.split(WAITING)[1]
    left = cluster.kubectl("get", "ie", "-o", "name", namespace="roundhouse-system", check=False)
    assert left.stdout == ""
    assert cluster.kubectl("get", "--raw", "/readyz").returncode == 0

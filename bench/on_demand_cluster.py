"""bench/on_demand.py --cluster: activations on the local cluster's real node, beside the engine alone.

Three llama-server engines as real pods (the tiny GGUF, one GPU each) in mode onDemand, the chart's
operator and gateway as pods, requests through the gateway's Service. Each rep: a start (budget 3,
nothing to stop) and a swap (budget 2: another engine drains and its pods go first), each a
streaming chat request timed to its first content token; the engine alone is started between them.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.on_demand import first_token
from tests.support import chart, engines, tinygguf, tools
from tests.support import cluster as lc

NS, RELEASE, KEY, ADMIN = "rh-bench", "rh-bench", "sk-bench", "admin-bench"
NAMES = ("tiny-a", "tiny-b", "tiny-c")
PHASE = re.compile(r"([a-zA-Z][a-zA-Z ,-]*?) (\d+\.\d+)s")


def engine(name: str) -> dict[str, Any]:
    return {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine", "metadata": {"name": name},
            "spec": {"engine": "llamacpp", "model": {"source": "/models/tiny.gguf", "servedName": name}, "gpus": 1,
                     "llamacpp": {"contextSize": 512}, "cache": {"existingClaim": "bench-models"}}}  # fmt: skip


def set_budget(c: lc.Cluster, gpus: int) -> None:
    patch = {"spec": {"mode": "onDemand", "onDemand": {"gpuBudget": gpus, "minActiveSeconds": 0, "drainSeconds": 1,
                                                       "idleSeconds": 3600, "maxWaitSeconds": 120}}}  # fmt: skip
    c.kubectl("patch", "enginemode", "default", "--type", "merge", "-p", json.dumps(patch), namespace=NS)


def running(c: lc.Cluster) -> list[str]:
    st = c.get("em", "default", NS).get("status") or {}
    return sorted(e["name"] for e in st.get("engines") or [] if e.get("state") == "active")


def settle(c: lc.Cluster, at_most: int) -> list[str]:
    """Wait until the mode is Ready with at most `at_most` engines running and no pod of another left."""

    def check() -> tuple[list[str]] | None:  # a tuple: no engine running is an answer too
        st = c.get("em", "default", NS).get("status") or {}
        states = [e.get("state") for e in st.get("engines") or []]
        pods = c.list("pods", NS, selector="roundhouse.dev/engine")
        calm = st.get("phase") == "Ready" and len(states) == len(NAMES) and set(states) <= {"active", "standby"}
        return (running(c),) if calm and states.count("active") == len(pods) <= at_most else None

    return lc.wait_until(check, 120, f"at most {at_most} engine(s) running, the rest on standby")[0]


def wait_metric(url: str) -> float:
    """The gateway's total seconds requests waited for an engine to start (its histogram's sum)."""
    text = httpx.get(url + "/metrics", timeout=5).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("roundhouse_gateway_activation_wait_seconds_sum"))  # fmt: skip


def activated_phases(c: lc.Cluster, name: str, after: float) -> list[tuple[str, float]]:
    """The phases in the newest Activated event for `name` (its message: 'phase 0.12s, ...')."""

    def find() -> list[tuple[str, float]] | None:
        events = [e for e in c.list("events", NS) if e["involvedObject"]["kind"] == "EngineMode"
                  and e["reason"] == "Activated" and e["message"].startswith(f"{name} is ready")]  # fmt: skip
        fresh = [e for e in events if lc_time(e.get("lastTimestamp") or e.get("eventTime")) >= after - 1]
        if not fresh:
            return None
        message = max(fresh, key=lambda e: e["metadata"]["creationTimestamp"])["message"]
        return [(p.strip(), float(s)) for p, s in PHASE.findall(message.split(": ", 1)[1])] if ": " in message else []

    return lc.wait_until(find, 30, f"the Activated event of {name}")


def lc_time(stamp: str | None) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else 0.0


def measure(c: lc.Cluster, url: str, name: str) -> dict[str, Any]:
    """One request for a standby engine: first token, the gateway's wait, the operator's timeline."""
    before, t0 = wait_metric(url), time.time()
    ttft = first_token(url, name, {"Authorization": f"Bearer {KEY}"})
    waited = wait_metric(url) - before
    return {"ttft": ttft, "waited": waited, "phases": activated_phases(c, name, t0)}


def run_cluster(reps: int, alone: Callable[[Path, dict[str, str]], float]) -> None:
    tools.require("helm", "llama-server", *tools.REAL_NODE)
    work = Path(tempfile.mkdtemp(prefix="rh-bench-cluster-"))
    gguf = tinygguf.write(work / "tiny.gguf")
    env = {**os.environ, "PATH": f"{engines.binary('llama-server').parent}:{os.environ['PATH']}"}
    started = False
    if not lc.is_up():
        node_env = {**os.environ, "ROUNDHOUSE_GPU_NODES": "0", "ROUNDHOUSE_CPU_NODES": "0"}
        subprocess.run([str(lc.LOCAL_CLUSTER), "up", "--real-nodes", "1"], check=True, env=node_env)
        started = True
    c = lc.Cluster()
    try:
        c.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(chart.REPO / "crds"))
        c.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        chart.models_volume(c, NS, "bench-models", chart.write_models(work / "models", [], work / "logs"))
        chart.install(c, RELEASE, NS, KEY, ADMIN, work)
        mode = {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "EngineMode", "metadata": {"name": "default"},
                "spec": {"mode": "onDemand", "onDemand": {"gpuBudget": 3, "minActiveSeconds": 0, "drainSeconds": 1,
                                                          "idleSeconds": 3600, "maxWaitSeconds": 120}}}  # fmt: skip
        c.apply([mode, *(engine(n) for n in NAMES)], NS)
        url = chart.gateway_url(c, RELEASE, NS)
        lc.wait_until(lambda: httpx.get(url + "/readyz", timeout=2).status_code == 200, 120, "the gateway")
        settle(c, 3)
        starts, swaps, alone_s = [], [], []
        for i in range(reps):
            set_budget(c, 1)  # one engine running, two on standby
            if not settle(c, 1):
                first_token(url, NAMES[0], {"Authorization": f"Bearer {KEY}"})
            set_budget(c, 3)  # a start: room for one more, nothing to stop
            have = settle(c, 1)
            starts.append(measure(c, url, next(n for n in NAMES if n not in have)))
            alone_s.append(alone(gguf, env))
            set_budget(c, 2)  # a swap: both GPUs held, the request needs one engine stopped first
            have = settle(c, 2)
            swaps.append(measure(c, url, next(n for n in NAMES if n not in have)))
            print(f"rep {i + 1}: start {starts[-1]['ttft']:.2f}s, swap {swaps[-1]['ttft']:.2f}s,"
                  f" alone {alone_s[-1]:.2f}s", flush=True)  # fmt: skip
        report(alone_s, starts, swaps)
    finally:
        chart.uninstall(c, RELEASE, NS)
        if started:
            lc.down()


def report(alone_s: list[float], starts: list[dict[str, Any]], swaps: list[dict[str, Any]]) -> None:
    med = statistics.median
    print(f"\nreal node, llama-server pods ({len(starts)} reps, interleaved with the engine started alone)")
    print(f"{'':44}{'median s':>10}{'max s':>10}")
    print(f"{'alone: start to first token':44}{med(alone_s):10.3f}{max(alone_s):10.3f}")
    for label, rows in (("start", starts), ("swap", swaps)):
        ttfts = [r["ttft"] for r in rows]
        print(f"{'cluster ' + label + ': request to first token':44}{med(ttfts):10.3f}{max(ttfts):10.3f}")
        names = [p for p, _ in rows[0]["phases"]]
        for n in names:
            vals = [dict(r["phases"]).get(n, 0.0) for r in rows]
            print(f"{'    ' + n:44}{med(vals):10.3f}{max(vals):10.3f}")
        seen = [r["waited"] - sum(s for _, s in r["phases"]) for r in rows]
        # Negative: the gateway routed to the starting pod (its own probe) before the operator saw it Ready.
        print(f"{'    gateway routes to it (from pod Ready)':44}{med(seen):10.3f}{max(seen):10.3f}")
        first = [r["ttft"] - r["waited"] for r in rows]
        print(f"{'    first token (after routing)':44}{med(first):10.3f}{max(first):10.3f}")
    added_start = med([r["ttft"] for r in starts]) - med(alone_s)
    added_swap = med([r["ttft"] for r in swaps]) - med(alone_s)
    verdict = {True: "met", False: "NOT met"}
    print(f"added on Kubernetes: start {added_start:.3f} s (target <= 1.5: {verdict[added_start <= 1.5]}),"
          f" swap {added_swap:.3f} s (target <= 2.5: {verdict[added_swap <= 2.5]})")  # fmt: skip

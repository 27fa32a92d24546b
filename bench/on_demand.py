"""Mode onDemand: what starting an engine through the gateway adds to the engine's own start.

The real llama-server (CPU build, the tests' tiny GGUF), in one run, interleaved:
- alone: the command line the gateway would run, started by hand, /health polled every 10 ms,
  then a streaming chat request: start to first content token;
- through the standalone gateway (two engines, budget one GPU, so every request for the other
  model is a swap: drain and SIGTERM the running engine, start the wanted one): request sent to
  first content token, for the first request (nothing running) and for swaps.
The added time is gateway minus alone (medians); target: under 1 s.

With --cluster, the same on Kubernetes, in the same run: the local cluster's real node (kubelet +
containerd here; root), the chart's operator and gateway as pods, three llama-server engines as
real pods (one GPU each, mode onDemand, budget 2), requests through the gateway's Service. Each rep
is a start (the budget raised to 3, so nothing is stopped) and a swap (budget 2 again: the request
needs another engine stopped first). Printed with the timeline the operator's Activated event gives,
the gateway's own wait (request to an endpoint it can route to, from its metrics) and the first
token. Targets: a start adds <= 1.5 s and a swap <= 2.5 s over the engine started alone.
Usage: .venv/bin/python bench/on_demand.py [--reps 5] [--cluster]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from roundhouse_api import InferenceEngine  # noqa: E402
from roundhouse_gateway.sources.localcmd import local_command  # noqa: E402
from tests.support import engines, processes, tinygguf  # noqa: E402

KEY, ADMIN = "sk-bench", "admin-bench"


def engine_doc(name: str, gguf: Path) -> dict[str, Any]:
    return {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine", "metadata": {"name": name},
            "spec": {"engine": "llamacpp", "model": {"source": str(gguf), "servedName": name}, "gpus": 1,
                     "llamacpp": {"contextSize": 512}}}  # fmt: skip


def first_token(url: str, model: str, headers: dict[str, str]) -> float:
    """Seconds from sending a streaming chat request to its first content delta."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": True}
    start = time.perf_counter()
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{model}: HTTP {r.status_code}: {r.read()[:300]!r}")
        took = None
        for line in r.iter_lines():  # read to the end: the engine finishes its request
            if took is None and line.startswith("data: {") and '"content"' in line:
                took = time.perf_counter() - start
    if took is None:
        raise RuntimeError(f"{model}: the stream ended without a token")
    return took


def alone(gguf: Path, env: dict[str, str]) -> float:
    """The engine by itself: start its process, poll /health every 10 ms, then the first token."""
    ie = InferenceEngine.model_validate(engine_doc("alone", gguf))
    port = processes.free_port()
    cmd = local_command(ie, port, tempfile.gettempdir(), which=lambda prog: shutil.which(prog, path=env["PATH"]))
    start = time.perf_counter()
    proc = subprocess.Popen(cmd.argv, env={**env, **cmd.env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        while True:
            try:
                if httpx.get(url + cmd.health_path, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {proc.returncode}")
            time.sleep(0.01)
        ready = time.perf_counter() - start
        return ready + first_token(url, "alone", {})
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--cluster", action="store_true", help="also on the local cluster's real node (root)")
    args = p.parse_args()
    if args.cluster:
        from bench.on_demand_cluster import run_cluster  # only with --cluster: it needs the real node

        run_cluster(args.reps, alone)
        return
    work = Path(tempfile.mkdtemp(prefix="rh-bench-on-demand-"))
    gguf = tinygguf.write(work / "tiny.gguf")
    env = {**os.environ, "PATH": f"{engines.binary('llama-server').parent}:{os.environ['PATH']}"}
    mode = {
        "apiVersion": "roundhouse.dev/v1alpha1",
        "kind": "EngineMode",
        "metadata": {"name": "bench"},
        "spec": {"mode": "onDemand", "onDemand": {"gpuBudget": 1, "minActiveSeconds": 0, "drainSeconds": 5}},
    }
    config = work / "bench.yaml"
    config.write_text(yaml.safe_dump_all([mode, engine_doc("one", gguf), engine_doc("two", gguf)]))
    gateway = processes.gateway(
        config, work, [KEY], [ADMIN], env=env, extra=("--engine-log-dir", str(work / "logs"), "--log-level", "warning")
    )
    gateway.start()
    url = gateway.url  # type: ignore[attr-defined]
    headers = {"Authorization": f"Bearer {KEY}"}
    alone_s, cold_s, swap_s = [], [], []
    try:
        cold_s.append(first_token(url, "one", headers))  # nothing runs yet: a start, no stop
        for i in range(args.reps):
            alone_s.append(alone(gguf, env))
            swap_s.append(first_token(url, ("two", "one")[i % 2], headers))  # the other one runs: a swap
    finally:
        gateway.stop()
    med = statistics.median
    print(f"llama-server {engines.binary('llama-server')} ({args.reps} reps, interleaved)")
    print(f"{'':40}{'median s':>10}{'max s':>10}")
    print(f"{'alone: start to first token':40}{med(alone_s):10.3f}{max(alone_s):10.3f}")
    print(f"{'gateway, nothing running: to first token':40}{med(cold_s):10.3f}{max(cold_s):10.3f}")
    print(f"{'gateway, swap: to first token':40}{med(swap_s):10.3f}{max(swap_s):10.3f}")
    added_cold, added_swap = med(cold_s) - med(alone_s), med(swap_s) - med(alone_s)
    print(
        f"added by the gateway: start {added_cold:.3f} s, swap {added_swap:.3f} s (target < 1 s:"
        f" {'met' if max(added_cold, added_swap) < 1 else 'NOT met'})"
    )


if __name__ == "__main__":
    main()

"""Gateway overhead, side by side in one run: direct to the engine, nginx, Roundhouse.

Each proxy is pinned to core 0 with taskset; the simulator and wrk share core 1. Contenders run
interleaved, `--reps` times each; the report gives the median and spread of requests/s at 64
connections and the proxy's CPU seconds per 1,000 requests (utime+stime of its process tree).
Usage: .venv/bin/python bench/gateway_overhead.py [--reps 3] [--seconds 10] [--litellm] [--routing] [--keys] [--state]
       [--adapters]
Each Roundhouse contender's CPU per request is also printed per repetition as a multiple of nginx's in
the same repetition (the machine's load moves both).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.processes import VENV_BIN, Process, enginesim, free_port  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")
# One key every contender accepts (LiteLLM will not start without a strong master key).
BENCH_KEY = "sk-bench-7f3a9c2e5b8d4f1a6c0e9b2d7a5f3c8e1b4d6a9c2f5e8b1d"
ADAPTER = "sql"  # --adapters: the LoRA adapter asked for by "rh-adapter"
LUA = """wrk.method = "POST"
wrk.body = '{"model":"m","messages":[{"role":"user","content":"hello"}],"max_tokens":8}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""
NGINX = """worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  upstream engine {{ server 127.0.0.1:{upstream}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://engine; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_buffering off; proxy_request_buffering off;
    }}
  }}
}}
"""


def cpu_seconds(pid: int) -> float:
    """utime+stime of a process and all its descendants (live ones), in seconds."""
    total = 0.0
    for p in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK
        except OSError:
            pass
    return total


def descendants(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    kids = [int(k) for k in out]
    return kids + [d for k in kids for d in descendants(k)]


def wrk(url: str, seconds: int, script: Path) -> tuple[float, float, float]:
    """requests/s, p50 ms and p99 ms from wrk --latency at 64 connections (wrk on core 1)."""
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c64", f"-d{seconds}s", "--latency", "-s", str(script),
                          url], capture_output=True, text=True, check=True).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        value, unit = float(m.group(1)), m.group(2)  # type: ignore[union-attr]
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    if "Non-2xx" in out:
        raise RuntimeError(f"errors during the run:\n{out}")
    return rps, pct("50"), pct("99")


LITELLM_VERSION = "1.106.2"  # pinned exactly: some releases were compromised upstream
LITELLM_VENV = Path.home() / ".cache" / "roundhouse" / f"litellm-{LITELLM_VERSION}"
LITELLM_CONFIG = """model_list:
  - model_name: m
    litellm_params: {{model: openai/m, api_base: "{upstream}/v1", api_key: sk-none}}
litellm_settings: {{drop_params: true, telemetry: false}}
general_settings: {{disable_spend_logs: true, master_key: {key}}}
"""


def roundhouse(name: str, docs: list[dict[str, object]], tmp: Path, logs: Path, keys: str | None = BENCH_KEY + "\n",
               state: str = "memory:") -> tuple[str, Process]:  # fmt: skip
    """A standalone gateway from `docs`, pinned to core 0, with `keys` as its key file (None: no auth) and
    `state` as its state store (memory: counted in the process, as before the stores)."""
    port = free_port()
    (tmp / f"{name}.yaml").write_text("\n---\n".join(json.dumps(d) for d in docs))
    auth: list[str] = []
    if keys is not None:
        (tmp / f"{name}.keys").write_text(keys)
        auth = ["--api-keys-file", str(tmp / f"{name}.keys")]
    gw = Process(name, ["taskset", "-c", "0", str(VENV_BIN / "roundhouse-gateway"), "--config",
                        str(tmp / f"{name}.yaml"), "--host", "127.0.0.1", "--port", str(port), *auth,
                        "--log-level", "warning", "--state", state], dict(os.environ), logs,
                 f"http://127.0.0.1:{port}/readyz").start()  # fmt: skip
    return f"http://127.0.0.1:{port}", gw


def key_contenders(doc: dict[str, object], tmp: Path, logs: Path) -> dict[str, tuple[str, Process]]:
    """No keys at all, against 50 named keys where the benchmark's has every limit (set high enough
    never to refuse): the limiter, usage and the usage chunk of streams all run. The third also sends
    the x-ratelimit-* headers on every answer, not only on 429s (the key file's rateLimitHeaders)."""
    headers = json.dumps({**json.loads(key_file()), "rateLimitHeaders": "always"})
    return {
        "rh-no-keys": roundhouse("rh-no-keys", [doc], tmp, logs, keys=None),
        "rh-keys-limits": roundhouse("rh-keys-limits", [doc], tmp, logs, keys=key_file()),
        "rh-keys-headers": roundhouse("rh-keys-headers", [doc], tmp, logs, keys=headers),
    }


def key_file() -> str:
    """50 named keys; the benchmark's has every limit, set high enough never to refuse."""
    entries = [{"name": f"team-{i}", "key": f"sk-team-{i}-{'x' * 32}", "models": ["*"]} for i in range(49)]
    entries.append({"name": "bench", "key": BENCH_KEY, "models": ["m"], "requestsPerMinute": 10**9,
                    "tokensPerMinute": 10**12, "monthlyTokenBudget": 10**15})  # fmt: skip
    return json.dumps({"keys": entries})


def state_contenders(doc: dict[str, object], tmp: Path, logs: Path, redis_url: str) -> dict[str, tuple[str, Process]]:
    """The keys of key_contenders counted three ways: in the process (as before the stores), with the
    embedded SQLite store, and in a redis-server on loopback (every admission one round trip)."""
    return {
        f"rh-state-{kind}": roundhouse(f"rh-state-{kind}", [doc], tmp, logs, keys=key_file(), state=url)
        for kind, url in (("memory", "memory:"), ("sqlite", f"sqlite://{tmp / 'state.sqlite'}"), ("redis", redis_url))
    }


def scraped(url: str) -> tuple[float, float]:
    """(requests answered, state store round trips) from a gateway's /metrics."""
    text = httpx.get(url + "/metrics").text
    total = {"roundhouse_gateway_requests_total": 0.0, "roundhouse_gateway_state_round_trips_total": 0.0}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in total:
            total[name] += float(line.rsplit(" ", 1)[1])
    return total["roundhouse_gateway_requests_total"], total["roundhouse_gateway_state_round_trips_total"]


def routing_contenders(upstream: str, tmp: Path, logs: Path) -> dict[str, tuple[str, Process]]:
    """Four replicas (the simulator behind four loopback addresses): the old rule (least outstanding)
    against the default rules (prefix affinity, and engine load scraped every second)."""
    port = upstream.rsplit(":", 1)[1]
    urls = [f"http://127.0.0.{i}:{port}" for i in range(1, 5)]
    engine = {
        "apiVersion": "roundhouse.dev/v1alpha1",
        "kind": "InferenceEngine",
        "metadata": {"name": "sim"},
        "spec": {"engine": "vllm", "model": {"source": "m", "servedName": "m"}, "endpoints": urls},
    }
    out = {}
    for name, rules in (("rh-4x-least", {"prefixAffinity": False, "engineLoad": False}), ("rh-4x-affinity", {})):
        mode = {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "EngineMode", "metadata": {"name": "m"},
                "spec": {"mode": "auto", "autoRules": rules}}  # fmt: skip
        out[name] = roundhouse(name, [mode, engine], tmp, logs)
    return out


def start_contenders(upstream: str, tmp: Path, logs: Path, litellm: bool = False, routing: bool = False,
                     keys: bool = False, redis_url: str | None = None, adapters: bool = False
                     ) -> tuple[dict[str, tuple[str, Process | None]], list[Process]]:  # fmt: skip
    """Each proxy in front of `upstream`, pinned to core 0. Returns name -> (base URL, process). With
    `adapters` the engine has a LoRA adapter, and "rh-adapter" asks the same gateway for it."""
    nport = free_port()
    (tmp / "nginx.conf").write_text(NGINX.format(tmp=tmp, upstream=upstream.rsplit(":", 1)[1], port=nport))
    nginx = Process("nginx", ["taskset", "-c", "0", "nginx", "-c", str(tmp / "nginx.conf"), "-g", "daemon off;"],
                    dict(os.environ), logs, None).start()  # fmt: skip
    spec: dict[str, object] = {"engine": "vllm", "model": {"source": "m", "servedName": "m"}, "endpoints": [upstream]}
    doc = {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine", "metadata": {"name": "sim"},
           "spec": spec}  # fmt: skip
    # The adapter is loaded on the simulator (vLLM's run-time adapters): the gateway reads its /v1/models.
    with_adapter = {**doc, "spec": {**spec, "adapters": [{"name": ADAPTER, "source": "org/sql-lora"}]}}
    gurl, gw = roundhouse("roundhouse", [with_adapter if adapters else doc], tmp, logs)
    contenders: dict[str, tuple[str, Process | None]] = {
        "direct": (upstream, None), "nginx": (f"http://127.0.0.1:{nport}", nginx),
        "roundhouse": (gurl, gw), **({"rh-adapter": (gurl, gw)} if adapters else {}),
    }  # fmt: skip
    procs = [nginx, gw]
    extra = {**(routing_contenders(upstream, tmp, logs) if routing else {}),
             **(key_contenders(doc, tmp, logs) if keys else {}),
             **(state_contenders(doc, tmp, logs, redis_url) if redis_url else {})}  # fmt: skip
    for name, (url, proc) in extra.items():
        contenders[name] = (url, proc)
        procs.append(proc)
    if litellm:
        lport = free_port()
        (tmp / "litellm.yaml").write_text(LITELLM_CONFIG.format(upstream=upstream, key=BENCH_KEY))
        env = {**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False"}
        ll = Process("litellm", ["taskset", "-c", "0", str(LITELLM_VENV / "bin" / "litellm"), "--config",
                                 str(tmp / "litellm.yaml"), "--host", "127.0.0.1", "--port", str(lport),
                                 "--num_workers", "1"], env, logs, f"http://127.0.0.1:{lport}/health/liveliness"
                     ).start(timeout=180)  # fmt: skip
        contenders["litellm"] = (f"http://127.0.0.1:{lport}", ll)
        procs.append(ll)
    time.sleep(1)
    return contenders, procs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--litellm", action="store_true", help=f"add LiteLLM (needs {LITELLM_VENV})")
    ap.add_argument(
        "--routing",
        action="store_true",
        help="add four-replica gateways: least outstanding against prefix affinity + engine load",
    )
    ap.add_argument("--keys", action="store_true",
                    help="add gateways without keys and with 50 named keys and limits, side by side")  # fmt: skip
    ap.add_argument("--adapters", action="store_true",
                    help="give the engine a LoRA adapter and ask the same gateway for it and for the base")  # fmt: skip
    ap.add_argument("--state", action="store_true",
                    help="add gateways whose keys are counted in memory, in SQLite and in redis-server")  # fmt: skip
    args = ap.parse_args()
    for tool in ("wrk", "nginx", "taskset", *(["redis-server"] if args.state else [])):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed: apt-get install wrk nginx-light util-linux")
    tmp = Path(tempfile.mkdtemp(prefix="rh-bench-"))
    logs = tmp / "logs"
    # On every loopback address, so that --routing can give one simulator four replica addresses.
    lora = {"runtime_lora": True, "lora_module": f"{ADAPTER}=/lora/{ADAPTER}"} if args.adapters else {}
    sim = enginesim("vllm", "sim", ["m"], logs, host="0.0.0.0", ttft_ms=20, tokens=8,
                    prefix=("taskset", "-c", "1"), **lora).start()  # fmt: skip
    upstream = sim.url.replace("0.0.0.0", "127.0.0.1")  # type: ignore[attr-defined]
    redis = None
    if args.state:  # beside the simulator and wrk on core 1: its CPU is not the gateway's
        redis = RedisServer(tmp / "redis")
        redis.start(prefix=("taskset", "-c", "1"))
    contenders, procs = start_contenders(upstream, tmp, logs, litellm=args.litellm, routing=args.routing,
                                         keys=args.keys, redis_url=redis.url if redis else None,
                                         adapters=args.adapters)  # fmt: skip
    trips: dict[str, list[float]] = {}
    script = tmp / "post.lua"
    script.write_text(LUA.replace("{key}", BENCH_KEY))
    adapter_script = tmp / "adapter.lua"
    adapter_script.write_text(LUA.replace("{key}", BENCH_KEY).replace('"model":"m"', f'"model":"{ADAPTER}"'))
    scripts = {"rh-adapter": adapter_script}
    results: dict[str, list[tuple[float, float, float, float | None]]] = {k: [] for k in contenders}
    try:
        for name, (url, _) in contenders.items():  # warm-up
            wrk(url + "/v1/chat/completions", 2, scripts.get(name, script))
        for rep in range(args.reps):
            for name, (url, proc) in contenders.items():
                counted = scraped(url) if name.startswith("rh-state-") else None  # before the CPU count starts
                before = cpu_seconds(proc.proc.pid) if proc and proc.proc else 0.0
                rps, p50, p99 = wrk(url + "/v1/chat/completions", args.seconds, scripts.get(name, script))
                cpu = cpu_seconds(proc.proc.pid) - before if proc and proc.proc else None
                if counted is not None:
                    after = scraped(url)
                    trips.setdefault(name, []).append((after[1] - counted[1]) / max(1.0, after[0] - counted[0]))
                per_k = cpu / (rps * args.seconds) * 1000 if cpu is not None else None
                results[name].append((rps, p50, p99, per_k))
                print(f"rep {rep + 1} {name:10} {rps:8.0f} req/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms"
                      + (f"  {per_k:.3f} CPU-s/1k" if per_k is not None else ""), flush=True)  # fmt: skip
    finally:
        for p in [*procs, sim]:
            p.stop()
        if redis is not None:
            redis.stop()
    print("\n| contender | req/s at 64 conns (median, min-max) | p50 ms | p99 ms | proxy CPU-s per 1k requests |")
    print("|---|---|---|---|---|")
    for name, rows in results.items():
        rps = [r[0] for r in rows]
        cpu = [r[3] for r in rows if r[3] is not None]
        print(f"| {name} | {statistics.median(rps):.0f} ({min(rps):.0f}-{max(rps):.0f}) | "
              f"{statistics.median(r[1] for r in rows):.2f} | {statistics.median(r[2] for r in rows):.2f} | "
              f"{f'{statistics.median(cpu):.3f}' if cpu else '-'} |")  # fmt: skip
    for name, rows in results.items():
        if name.startswith(("roundhouse", "rh-")):
            ratios = [r[3] / n[3] for r, n in zip(rows, results["nginx"], strict=True) if r[3] and n[3]]
            print(f"{name} CPU per request vs nginx's, per rep: {', '.join(f'x{x:.2f}' for x in ratios)}"
                  f" (median x{statistics.median(ratios):.2f})")  # fmt: skip
    if args.adapters:
        pairs = [
            b[3] / a[3] for a, b in zip(results["roundhouse"], results["rh-adapter"], strict=True) if a[3] and b[3]
        ]
        print(f"rh-adapter vs roundhouse (the base model), CPU per request: x{statistics.median(pairs):.3f} (median of"
              f" {len(pairs)} paired reps, {min(pairs):.3f}-{max(pairs):.3f})")  # fmt: skip
    if args.keys:
        # Paired per rep: each rep ran the gateways back to back, under the same machine load.
        for name in ("rh-keys-limits", "rh-keys-headers"):
            pairs = [b[3] / a[3] for a, b in zip(results["rh-no-keys"], results[name], strict=True) if a[3] and b[3]]
            print(f"{name} vs rh-no-keys, CPU per request: x{statistics.median(pairs):.3f} (median of {len(pairs)}"
                  f" paired reps, {min(pairs):.3f}-{max(pairs):.3f})")  # fmt: skip
    if args.state:
        for name in ("rh-state-sqlite", "rh-state-redis"):
            pairs = [b[3] / a[3] for a, b in zip(results["rh-state-memory"], results[name], strict=True)
                     if a[3] and b[3]]  # fmt: skip
            print(f"{name} vs rh-state-memory, CPU per request: x{statistics.median(pairs):.3f} (median of"
                  f" {len(pairs)} paired reps, {min(pairs):.3f}-{max(pairs):.3f}); store round trips per request:"
                  f" {statistics.median(trips[name]):.4f}")  # fmt: skip


if __name__ == "__main__":
    main()

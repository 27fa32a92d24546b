"""Routing policies side by side: time to first token, throughput, cache hits and balance.

Real part: REPLICAS real llama-server processes (CPU build; a random-weight model written with
`gguf`, 256 wide and 4 layers deep, so that prefilling a 2k-token prompt costs ~0.3 s on one core;
`--parallel 2`, prompt caching on) behind the standalone gateway, one gateway per policy, fresh
replicas for every (workload, policy) so no policy inherits another's cache. Simulated part: 16
engine simulators with the prefix-cache model (tests/support/prefixcache.py), same workloads, more
traffic. Workloads: (a) multi-turn chats, each with its own long system prompt, and a think time
between a reply and the next turn; (b) independent random prompts; (c) one hot system prompt shared
by every user. Policies: least-outstanding (the
old rule), round-robin, prefix affinity, prefix affinity + engine-reported load. Cache hits are the
engines' own usage.prompt_tokens_details.cached_tokens; load is each replica's requests in flight as it
reports them (sampled every 20 ms, averaged over the run); spills are the requests that prefix
affinity sent past their own replica (bounded load).

Why think time in (a): a client that sends its next turn the moment its reply ends finds the replica
that served it with one request fewer than the others, so least-outstanding sends it back there and
looks like affinity by accident. Users read a reply first, while others' requests arrive.
Usage: .venv/bin/python bench/routing.py [--part real|sim|both] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support import engines, processes, tinygguf  # noqa: E402

KEY, ADMIN = "sk-bench", "admin-bench"
WORDS = ["the", "a", "is", "of", "and", "to", "in", "it", "engine", "gateway", "model", "token"]
POLICIES: dict[str, dict[str, Any]] = {
    "least-outstanding": {"prefixAffinity": False, "engineLoad": False},
    "round-robin": {"prefixAffinity": False, "engineLoad": False, "balancing": "roundRobin"},
    "prefix-affinity": {"prefixAffinity": True, "engineLoad": False},
    "prefix+load": {"prefixAffinity": True, "engineLoad": True},
}


@dataclass
class Result:
    ttft: list[float] = field(default_factory=list)
    prompt: int = 0
    cached: int = 0
    tokens: int = 0
    seconds: float = 0.0
    load: list[float] = field(default_factory=list)
    spills: int = 0


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


Turn = list[dict[str, str]]  # the messages of one request, the reply appended by the runner
Script = list[list[str]]  # per conversation: the system prompt, then the user turns


def workload(name: str, rng: random.Random, scale: int) -> Script:
    """Conversations: [system, user1, user2, ...]; each runs its turns in order."""
    if name == "a":  # multi-turn chats with long per-conversation system prompts
        return [[text(rng, 800), *(f"question {t}: {text(rng, 12)}" for t in range(4))] for _ in range(2 * scale)]
    if name == "b":  # independent random prompts
        return [[text(rng, 800), text(rng, 12)] for _ in range(16 * scale)]  # twice (a)'s requests: p50 is noisy
    hot = text(rng, 800)  # (c) a hot prefix shared by many users
    return [[hot, f"user {i}: {text(rng, 12)}"] for i in range(10 * scale)]


THINK_S = (0.3, 1.5)  # (a): seconds between a reply and the next turn, uniform


async def converse(s: aiohttp.ClientSession, url: str, script: list[str], res: Result, max_tokens: int,
                   think: random.Random) -> None:  # fmt: skip
    messages = [{"role": "system", "content": script[0]}]
    for t, user in enumerate(script[1:]):
        if t:
            await asyncio.sleep(think.uniform(*THINK_S))
        messages.append({"role": "user", "content": user})
        body = {"model": "m", "messages": messages, "max_tokens": max_tokens, "stream": True, "ignore_eos": True,
                "stream_options": {"include_usage": True}}  # fmt: skip
        start, first, reply = time.perf_counter(), None, []
        async with s.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}) as r:
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}: {(await r.text())[:300]}")
            res.spills += ":spill" in r.headers.get("x-roundhouse-route-reason", "")
            async for raw in r.content:
                line = raw.decode().strip()
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                for choice in chunk.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        first = first or time.perf_counter()
                        reply.append(choice["delta"]["content"])
                if usage := chunk.get("usage"):
                    res.prompt += usage.get("prompt_tokens", 0)
                    res.cached += (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
                    res.tokens += usage.get("completion_tokens", 0)
        res.ttft.append((first or time.perf_counter()) - start)
        messages.append({"role": "assistant", "content": "".join(reply)})


async def in_flight(s: aiohttp.ClientSession, url: str, real: bool) -> float:
    """Requests a replica holds now, as it reports them itself."""
    if real:
        async with s.get(f"{url}/metrics") as r:
            text = await r.text()
        names = ("llamacpp:requests_processing", "llamacpp:requests_deferred")
        return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(names))
    async with s.get(f"{url}/_sim/config") as r:
        return float((await r.json())["running"])


async def drive(url: str, script: Script, concurrency: int, max_tokens: int, replicas: list[str],
                real: bool) -> Result:  # fmt: skip
    res = Result()
    slots = asyncio.Semaphore(concurrency)
    load = [0.0] * len(replicas)

    async def one(i: int, conv: list[str], s: aiohttp.ClientSession) -> None:
        async with slots:
            await converse(s, url, conv, res, max_tokens, random.Random(i))

    async def sample(s: aiohttp.ClientSession) -> None:  # time-averaged load per replica
        while True:
            for i, v in enumerate(await asyncio.gather(*(in_flight(s, r, real) for r in replicas))):
                load[i] += v
            await asyncio.sleep(0.02)

    start = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
        sampler = asyncio.create_task(sample(s))
        await asyncio.gather(*(one(i, c, s) for i, c in enumerate(script)))
        sampler.cancel()
    res.seconds = time.perf_counter() - start
    res.load = load
    return res


def gateway_config(work: Path, name: str, urls: list[str], rules: dict[str, Any], family: str) -> Path:
    mode = {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "EngineMode", "metadata": {"name": "bench"},
            "spec": {"mode": "auto", "autoRules": rules}}  # fmt: skip
    engine = {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine", "metadata": {"name": "m"},
              "spec": {"engine": family, "model": {"source": "/models/m.gguf" if family == "llamacpp" else "org/m",
                                                   "servedName": "m"}, "endpoints": urls}}  # fmt: skip
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump_all([mode, engine]))
    return path


def real_replicas(model: Path, n: int, work: Path) -> list[processes.Process]:
    container = engines.llama_container("m", 8192, ("--parallel", "2", "--threads", "1"))
    return [engines.llama_server(container, model, work, name=f"llama-{i}").start(timeout=60) for i in range(n)]


def sim_replicas(n: int, work: Path) -> list[processes.Process]:
    return [processes.enginesim("llamacpp", f"sim-{i}", ["m"], work, prefill_us_per_token=100, cache_tokens=6000,
                                tokens=4, itl_ms=25).start() for i in range(n)]  # fmt: skip


def run(part: str, start: Callable[[], list[processes.Process]], scale: int, concurrency: int, seed: int,
        work: Path) -> dict[tuple[str, str], Result]:  # fmt: skip
    results: dict[tuple[str, str], Result] = {}
    max_tokens = 4
    for wl in ("a", "b", "c"):
        script = workload(wl, random.Random(seed), scale)
        for policy, rules in POLICIES.items():
            replicas = start()  # fresh caches for every run
            urls = [p.url for p in replicas]  # type: ignore[attr-defined]
            config = gateway_config(work, f"{part}-{wl}-{policy}", urls, rules, "llamacpp")
            gw = processes.gateway(config, work, [KEY], [ADMIN], probe_interval=1.0,
                                   extra=("--log-level", "warning")).start()  # fmt: skip
            try:
                res = asyncio.run(drive(gw.url, script, concurrency, max_tokens, urls, part == "real"))  # type: ignore[attr-defined]
            finally:
                gw.stop()
                for p in replicas:
                    p.stop()
            results[(wl, policy)] = res
            print(f"  {part} {wl} {policy}: {len(res.ttft)} requests in {res.seconds:.1f}s", flush=True)
    return results


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def report(part: str, results: dict[tuple[str, str], Result]) -> None:
    print(f"\n{part}: TTFT p50/p99 (s), completion tokens/s, cache hits, max/mean load per replica, share of"
          " requests spilled; ratios to least-outstanding")  # fmt: skip
    print(f"{'wl':3}{'policy':20}{'p50':>8}{'p99':>8}{'tok/s':>8}{'hits':>7}{'max/mean':>9}{'spills':>7}"
          f"{'p50 x':>8}{'tok/s x':>8}")  # fmt: skip
    for (wl, policy), r in results.items():
        base = results[(wl, "least-outstanding")]
        p50, bp50 = statistics.median(r.ttft), statistics.median(base.ttft)
        tps, btps = r.tokens / r.seconds, base.tokens / base.seconds
        hits = r.cached / r.prompt if r.prompt else 0.0
        balance = max(r.load) / statistics.mean(r.load) if r.load and statistics.mean(r.load) else 0.0
        print(f"{wl:3}{policy:20}{p50:8.3f}{pct(r.ttft, 0.99):8.3f}{tps:8.1f}{hits:7.2f}{balance:9.2f}"
              f"{r.spills / len(r.ttft):7.2f}{bp50 / p50:8.2f}{tps / btps:8.2f}")  # fmt: skip
    a = statistics.median(results[("a", "least-outstanding")].ttft) / statistics.median(
        results[("a", "prefix+load")].ttft
    )
    b = statistics.median(results[("b", "prefix+load")].ttft) / statistics.median(
        results[("b", "least-outstanding")].ttft
    )
    c = results[("c", "prefix+load")]
    balance = max(c.load) / statistics.mean(c.load)
    print(f"targets ({part}, prefix+load): (a) TTFT p50 {a:.2f}x lower (>= 2: {'met' if a >= 2 else 'NOT met'});"
          f" (b) {100 * (b - 1):+.1f}% vs least-outstanding (within 5%: {'met' if abs(b - 1) <= 0.05 else 'NOT met'});"
          f" (c) max/mean load {balance:.2f} (<= 1.3: {'met' if balance <= 1.3 else 'NOT met'})")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["real", "sim", "both"], default="both")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--replicas", type=int, default=3)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rh-bench-routing-"))
    if args.part in ("real", "both"):
        model = tinygguf.write(work / "bench.gguf", context_length=4096, embd=256, layers=4, heads=4, ff=768)
        report("real", run("real", lambda: real_replicas(model, args.replicas, work), scale=3,
                           concurrency=args.replicas,
                           seed=args.seed, work=work))  # fmt: skip
    if args.part in ("sim", "both"):
        report("sim", run("sim", lambda: sim_replicas(16, work), scale=12, concurrency=16, seed=args.seed,
                          work=work))  # fmt: skip


if __name__ == "__main__":
    main()

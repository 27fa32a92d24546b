"""Gateway latency side by side: added latency at a fixed rate, and streaming time to first chunk.

Same contenders and pinning as bench/gateway_overhead.py (proxies on core 0; this load generator
and the simulator on core 1), interleaved, `--reps` times each.
- Fixed rate (open loop) at 40 and 200 req/s, non-streaming, 20 ms upstream: p50/p99 latency and
  the added latency over direct.
- Streams: 64 and 256 concurrent streams of 32 chunks 5 ms apart: time to first chunk p50/p99,
  chunks/s delivered, proxy CPU seconds per 1,000 streams.
Usage: .venv/bin/python bench/gateway_latency.py [--reps 3] [--litellm] [--only fixed|streams]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from gateway_overhead import BENCH_KEY, cpu_seconds, start_contenders  # noqa: E402

from tests.support.processes import enginesim  # noqa: E402

HEADERS = {"Authorization": f"Bearer {BENCH_KEY}", "Content-Type": "application/json"}
BODY = b'{"model":"m","messages":[{"role":"user","content":"hello"}],"max_tokens":8}'
STREAM_BODY = b'{"model":"m","stream":true,"messages":[{"role":"user","content":"hello"}],"max_tokens":32}'


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] * 1000


async def fixed_rate(url: str, rate: int, seconds: float, model: str = "m") -> list[float]:
    """Open loop: request i starts at i/rate whatever happened to the others."""
    latencies: list[float] = []
    body = BODY if model == "m" else BODY.replace(b'"model":"m"', f'"model":"{model}"'.encode())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

        async def one() -> None:
            start = time.perf_counter()
            async with s.post(url, data=body, headers=HEADERS) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{url}: HTTP {r.status}")
            latencies.append(time.perf_counter() - start)

        t0 = time.perf_counter()
        tasks = []
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return latencies


async def streams(url: str, n: int, rounds: int) -> tuple[list[float], int, float]:
    """`rounds` batches of `n` concurrent streams: times to first chunk, chunks received, wall time."""
    ttfc: list[float] = []
    chunks = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

        async def one() -> None:
            nonlocal chunks
            start = time.perf_counter()
            async with s.post(url, data=STREAM_BODY, headers=HEADERS) as r:
                first = True
                async for data in r.content.iter_any():
                    if first:
                        ttfc.append(time.perf_counter() - start)
                        first = False
                    chunks += data.count(b"data: {")

        t0 = time.perf_counter()
        for _ in range(rounds):
            await asyncio.gather(*(one() for _ in range(n)))
        return ttfc, chunks, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--litellm", action="store_true")
    ap.add_argument("--only", choices=["fixed", "streams"], help="run one half (the other is skipped)")
    args = ap.parse_args()
    os.sched_setaffinity(0, {1})
    tmp = Path(tempfile.mkdtemp(prefix="rh-bench-"))
    logs = tmp / "logs"
    sim = enginesim("vllm", "sim", ["m"], logs, ttft_ms=20, itl_ms=5, tokens=32, prefix=("taskset", "-c", "1")).start()
    contenders, procs = start_contenders(sim.url, tmp, logs, litellm=args.litellm)  # type: ignore[attr-defined]
    fixed: dict[tuple[str, int], list[tuple[float, float]]] = {}
    stream: dict[tuple[str, int], list[tuple[float, float, float, float | None]]] = {}
    try:
        for rep in range(args.reps):
            for rate in (40, 200) if args.only != "streams" else ():
                for name, (base, _) in contenders.items():
                    lat = asyncio.run(fixed_rate(base + "/v1/chat/completions", rate, args.seconds))
                    fixed.setdefault((name, rate), []).append((pct(lat, 0.5), pct(lat, 0.99)))
                    p50, p99 = pct(lat, 0.5), pct(lat, 0.99)
                    print(f"rep {rep + 1} {rate:3} req/s {name:10} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms", flush=True)
            for n in (64, 256) if args.only != "fixed" else ():
                for name, (base, proc) in contenders.items():
                    before = cpu_seconds(proc.proc.pid) if proc and proc.proc else 0.0
                    rounds = max(2, 1024 // n)
                    ttfc, chunks, wall = asyncio.run(streams(base + "/v1/chat/completions", n, rounds))
                    cpu = cpu_seconds(proc.proc.pid) - before if proc and proc.proc else None
                    per_k = cpu / (n * rounds) * 1000 if cpu is not None else None
                    stream.setdefault((name, n), []).append((pct(ttfc, 0.5), pct(ttfc, 0.99), chunks / wall, per_k))
                    print(f"rep {rep + 1} {n:3} streams {name:10} TTFC p50 {pct(ttfc, 0.5):6.2f} ms p99 "
                          f"{pct(ttfc, 0.99):7.2f} ms  {chunks / wall:8.0f} chunks/s"
                          + (f"  {per_k:.3f} CPU-s/1k streams" if per_k is not None else ""), flush=True)  # fmt: skip
    finally:
        for p in [*procs, sim]:
            p.stop()
    med = statistics.median
    if fixed:
        print("\n| rate | contender | p50 ms | p99 ms | added p50 ms | added p99 ms |\n|---|---|---|---|---|---|")
    for (name, rate), rows in fixed.items():
        d50, d99 = med(r[0] for r in fixed[("direct", rate)]), med(r[1] for r in fixed[("direct", rate)])
        p50, p99 = med(r[0] for r in rows), med(r[1] for r in rows)
        print(f"| {rate}/s | {name} | {p50:.2f} | {p99:.2f} | {p50 - d50:+.2f} | {p99 - d99:+.2f} |")
    # Added TTFC is the median of each repetition's difference to direct in the same repetition:
    # the contenders of one repetition ran back to back, so machine noise between repetitions cancels.
    print("\n| streams | contender | TTFC p50 ms | TTFC p99 ms | added p50 ms (paired) | chunks/s "
          "| proxy CPU-s / 1k streams |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for (name, n), rows in stream.items():
        cpu = [r[3] for r in rows if r[3] is not None]
        added = med(r[0] - d[0] for r, d in zip(rows, stream[("direct", n)], strict=True))
        print(f"| {n} | {name} | {med(r[0] for r in rows):.2f} | {med(r[1] for r in rows):.2f} | {added:+.2f} | "
              f"{med(r[2] for r in rows):.0f} | {f'{med(cpu):.3f}' if cpu else '-'} |")  # fmt: skip
    paired(fixed, stream, list(contenders))


Fixed = dict[tuple[str, int], list[tuple[float, float]]]
Streams = dict[tuple[str, int], list[tuple[float, float, float, float | None]]]


def paired(fixed: Fixed, stream: Streams, names: list[str]) -> None:
    """Per repetition, each Roundhouse contender against the same repetition's direct (added p99) and
    nginx (CPU per stream): the machine's load moves both sides of a pair alike."""
    for name in (n for n in names if n.startswith(("roundhouse", "rh-"))):
        for rate in (40, 200):
            if (name, rate) in fixed:
                added = [r[1] - d[1] for r, d in zip(fixed[(name, rate)], fixed[("direct", rate)], strict=True)]
                print(f"{name} added p99 at {rate}/s, paired per rep: {', '.join(f'{x:+.2f}' for x in added)} ms"
                      f" (median {statistics.median(added):+.2f})")  # fmt: skip
        for n in (64, 256):
            if (name, n) in stream and ("nginx", n) in stream:
                ratios = [r[3] / g[3] for r, g in zip(stream[(name, n)], stream[("nginx", n)], strict=True)
                          if r[3] and g[3]]  # fmt: skip
                each = ", ".join(f"x{x:.2f}" for x in ratios)
                print(f"{name} CPU per stream vs nginx's, {n} streams, per rep: {each}"
                      f" (median x{statistics.median(ratios):.2f})")  # fmt: skip


if __name__ == "__main__":
    main()

"""Shadow traffic's cost to the primary, side by side in one run: two standalone gateways in front of
the same simulated primary (20 ms), one of them also copying 50% of the model's requests to a shadow
engine (another simulator, 40 ms). Open-loop load at a fixed rate, interleaved `--reps` times; the
report gives each gateway's p50 and p99 and, paired per repetition, what the shadow added to the
primary's p99 (target: at most +1 ms at 100 requests/s). Gateways on core 0; the simulators and this
load generator on core 1 (in the run without a shadow, the shadow's simulator gets the same share of
requests straight from the load generator, so core 1 does the same work either way).
Usage: .venv/bin/python bench/shadow.py [--reps 5] [--seconds 10] [--rate 100] [--percent 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from gateway_latency import fixed_rate, pct  # noqa: E402
from gateway_overhead import roundhouse  # noqa: E402

from tests.support.processes import enginesim  # noqa: E402


def engine(name: str, url: str, served: str, routing: dict[str, object] | None = None) -> dict[str, object]:
    spec: dict[str, object] = {"engine": "vllm", "model": {"source": "m", "servedName": served}, "endpoints": [url]}
    if routing:
        spec["routing"] = routing
    return {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine", "metadata": {"name": name},
            "spec": spec}  # fmt: skip


async def alongside(url: str, rate: int, other: str, other_rate: int, seconds: float) -> list[float]:
    """The latencies at `url` at `rate`, while `other` gets `other_rate` requests a second (unmeasured)."""
    measured = fixed_rate(url, rate, seconds)
    if not other_rate:
        return await measured
    lat, _ = await asyncio.gather(measured, fixed_rate(other, other_rate, seconds, model="s"))
    return lat


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rate", type=int, default=100)
    ap.add_argument("--percent", type=float, default=50)
    args = ap.parse_args()
    os.sched_setaffinity(0, {1})
    tmp = Path(tempfile.mkdtemp(prefix="rh-bench-shadow-"))
    logs = tmp / "logs"
    primary = enginesim("vllm", "primary", ["m"], logs, ttft_ms=20, tokens=8, prefix=("taskset", "-c", "1")).start()
    shadow = enginesim("vllm", "shadow", ["s"], logs, ttft_ms=40, tokens=8, prefix=("taskset", "-c", "1")).start()
    p_url, s_url = primary.url, shadow.url  # type: ignore[attr-defined]
    plain = engine("primary", p_url, "m")
    copied = engine("shadow", s_url, "s", {"shadow": {"of": "m", "percent": args.percent, "maxInFlight": 64}})
    gateways = {"no-shadow": roundhouse("no-shadow", [plain], tmp, logs),
                f"shadow-{args.percent:g}%": roundhouse("with-shadow", [plain, copied], tmp, logs)}  # fmt: skip
    rows: dict[str, list[tuple[float, float]]] = {name: [] for name in gateways}
    try:
        for url, _ in gateways.values():  # warm-up
            asyncio.run(fixed_rate(url + "/v1/chat/completions", args.rate, 2))
        for rep in range(args.reps):
            for name, (url, _) in gateways.items():
                # The shadow's simulator shares core 1 with the primary's and this load generator: without a
                # shadow, the same copies go to it straight from here, so core 1 does the same work in both.
                extra = 0 if name != "no-shadow" else round(args.rate * args.percent / 100)
                lat = asyncio.run(alongside(url + "/v1/chat/completions", args.rate, s_url + "/v1/chat/completions",
                                            extra, args.seconds))  # fmt: skip
                rows[name].append((pct(lat, 0.5), pct(lat, 0.99)))
                print(f"rep {rep + 1} {name:12} p50 {pct(lat, 0.5):6.2f} ms  p99 {pct(lat, 0.99):6.2f} ms", flush=True)
        url = gateways[f"shadow-{args.percent:g}%"][0]
        copies = sum(float(line.rsplit(" ", 1)[1]) for line in httpx.get(url + "/metrics").text.splitlines()
                     if line.startswith("roundhouse_gateway_shadow_requests_total{"))  # fmt: skip
    finally:
        for p in [*(g[1] for g in gateways.values()), primary, shadow]:
            p.stop()
    base, shadowed = rows["no-shadow"], rows[f"shadow-{args.percent:g}%"]
    med = statistics.median
    print("\n| gateway | p50 ms | p99 ms |\n|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {med(x[0] for x in r):.2f} | {med(x[1] for x in r):.2f} |")
    added = [s[1] - b[1] for s, b in zip(shadowed, base, strict=True)]
    print(f"\nshadow {args.percent:g}% at {args.rate} req/s: added p99 {med(added):+.2f} ms (median of"
          f" {len(added)} paired reps: {', '.join(f'{a:+.2f}' for a in added)}); copies: {copies:.0f}")  # fmt: skip


if __name__ == "__main__":
    main()

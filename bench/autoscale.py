"""Elastic engines vs fixed fleets, side by side in one run, on a bursty trace over three models.

A discrete-event model of the fleet (0.25 s ticks), driven by the real decision code: the autoscaler
(roundhouse_api.autoscaler) and the on-demand plan sharing the GPU budget (roundhouse_api.ondemand),
fed what the gateways would report (requests in flight and waiting per engine: every 10 s while busy,
at once when a request starts waiting for a standby engine or the load asks for another replica).
The engines are modelled, not run (bench/engine_model.py): start times like the real families' (vLLM
tens of seconds, llama.cpp seconds), llama.cpp replicas with fixed slots, and vLLM replicas either
batching as vLLM measured itself slow down (the first table) or in fixed slots like llama.cpp (the
second, the model of earlier runs); a replica's GPUs are held from its start until its pod is gone.
Requests go to the least loaded ready replica. No gateway or operator process runs here:
`tests/integration/test_autoscaling.py` and `test_standalone_autoscaling.py` run the real ones.

Fleets (each starts as the trace's base load leaves it: the trace is a slice of a running service):
- peak: fixed replicas sized for each model's peak (always running);
- mean: fixed replicas sized for each model's mean load;
- elastic: mode onDemand with spec.autoscaling, within a GPU budget smaller than the peak fleet;
- react* and foresee*: replicas that know the bursts, for bounds (oracle()): the peak size from the
  instant a burst starts, or from one engine start before it. With --bound, react*'s cheapest
  standing sizes that meet the p95 target: what holding capacity, rather than predicting, costs.
Printed: p50/p95/p99 time to first token, p95 wait for a place on a replica, p50/p95 to the last
token, GPU-seconds held, swaps (starts from zero) and failed requests (waited past maxWaitSeconds, or
cut by a drain deadline). Targets: elastic p95 TTFT within 1.5x of the peak fleet's with <= 60% of
its GPU-seconds and 0 failed; on an alternating-demand trace (two models, a budget for one) at most
one swap per minActiveSeconds per engine.
Usage: .venv/bin/python bench/autoscale.py [--seed 7] [--minutes 30] [--bound]
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import statistics
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "crds"))

from roundhouse_api import Autoscaling  # noqa: E402
from roundhouse_api.autoscaler import Reading, autoscale, next_step  # noqa: E402
from roundhouse_api.ondemand import Budget, DemandView, plan_on_demand  # noqa: E402

sys.path.insert(0, str(REPO))
from bench.engine_model import Model  # noqa: E402

DT = 0.25
REPORT_EVERY = 10.0
STOP_SECONDS = 1.0  # a pod's stop, once its requests are done
MAX_WAIT = 300.0
EPOCH = 1.7e9  # the decision code reads epoch seconds (0.0 would read as "unset")
Schedule = Callable[[float], dict[str, int]]  # seconds into the trace -> replicas per model


MODELS = [
    Model("chat-7b", "vllm", 1, 25.0, 8, 0.15, 4.0),
    Model("code-14b", "vllm", 2, 40.0, 8, 0.25, 6.0),
    Model("small-gguf", "llamacpp", 1, 6.0, 4, 0.10, 3.0),
]


@dataclass
class Request:
    model: str
    arrived: float
    started: float | None = None
    first_at: float | None = None  # its first token
    left: float = 0.0  # decode still to do, in solo seconds
    done_at: float | None = None
    failed: bool = False


@dataclass
class Replica:
    ready_at: float
    running: list[Request] = field(default_factory=list)
    stopping: bool = False
    gone_at: float | None = None  # once stopping and empty: when its GPUs are free


@dataclass
class Fleet:
    replicas: dict[str, list[Replica]]
    queues: dict[str, deque[Request]] = field(default_factory=dict)
    gpu_seconds: float = 0.0
    swaps: dict[str, int] = field(default_factory=dict)
    draining: set[str] = field(default_factory=set)  # engines that take no new requests


# The trace's rates: requests/s per model, and its bursts as (start s, seconds, extra requests/s).
BASE = {"chat-7b": 0.4, "code-14b": 0.15, "small-gguf": 0.3}
BURSTS = {"chat-7b": [(300, 90, 3.5), (1100, 90, 3.5)], "code-14b": [(650, 120, 2.0), (1450, 90, 2.0)],
          "small-gguf": [(450, 60, 2.5), (1300, 60, 2.5)]}  # fmt: skip


def trace(minutes: float, seed: int) -> list[Request]:
    """Poisson arrivals per model at a base rate, with bursts (that do not all coincide) from their first second."""
    rng = random.Random(seed)
    base, bursts = BASE, BURSTS
    out = []
    end = minutes * 60
    for m in MODELS:
        edges = sorted({e for s, d, _ in bursts[m.name] for e in (s, s + d)} | {end})
        t = 0.0
        while t < end:
            rate = base[m.name] + sum(r for s, d, r in bursts[m.name] if s <= t < s + d)
            edge = next(e for e in edges if e > t)
            gap = rng.expovariate(rate)
            if t + gap >= edge:  # the rate changes first: start afresh there (arrivals are memoryless)
                t = edge
                continue
            t += gap
            out.append(Request(m.name, t))
    return sorted(out, key=lambda r: r.arrived)


def alternating(minutes: float) -> list[Request]:
    """Two llama.cpp models asked in turn, a request every 2 s, the model changing every 10 s."""
    return [Request("small-gguf" if int(t // 10) % 2 else "alt-gguf", t) for t in range(0, int(minutes * 60), 2)]


def fixed_sizes(reqs: list[Request], minutes: float, models: dict[str, Model], peak: bool) -> dict[str, int]:
    """Replicas per model for its peak (the busiest 30 s) or its mean in-flight load."""
    out = {}
    for m in models.values():
        times = [r.arrived for r in reqs if r.model == m.name]
        if peak:
            window = max((sum(1 for t in times if s <= t < s + 30) for s in range(0, int(minutes * 60), 10)), default=0)
            load = window / 30 * (m.decode + m.prefill)
        else:
            load = len(times) / (minutes * 60) * (m.decode + m.prefill)
        out[m.name] = max(1, math.ceil(load / m.slots))
    return out


def oracle(models: dict[str, Model], peak: dict[str, int], lead: bool, standing: dict[str, int] | None = None
           ) -> Schedule:  # fmt: skip
    """Replicas that know the trace's bursts: each model at its peak-fleet size from its burst's start
    (`lead`: from the engine's start time before it, so the replicas are ready when it starts) to its
    end, and at `standing` replicas otherwise (default: what its base rate needs). Not a policy anyone
    can run: a bound on what reacting to load (without `lead`) and predicting it (with) can reach."""
    rest = standing or {n: max(1, math.ceil(BASE[n] * (m.prefill + m.decode) / m.slots)) for n, m in models.items()}

    def sizes(t: float) -> dict[str, int]:
        out = {}
        for name, m in models.items():
            ahead = m.start if lead else 0.0
            burst = any(s - ahead <= t < s + d for s, d, _ in BURSTS[name])
            out[name] = peak[name] if burst else rest[name]
        return out

    return sizes


def cheapest_reaction(reqs: list[Request], minutes: float, models: dict[str, Model], peak: dict[str, int],
                      peak_row: dict[str, float]) -> None:  # fmt: skip
    """react* with every standing size from 1 to the peak size per model: the fewest GPU-seconds at
    which reacting at once (to the peak size, the instant a burst starts) meets the p95 target."""
    best: tuple[float, float, dict[str, int]] | None = None
    for combo in itertools.product(*(range(1, peak[n] + 1) for n in models)):
        standing = dict(zip(models, combo, strict=True))
        fresh = [Request(r.model, r.arrived) for r in reqs]
        fleet = run(fresh, minutes, models, None, 0, {}, oracle(models, peak, False, standing))
        ttft = sorted(r.first_at - r.arrived for r in fresh if r.first_at is not None)
        p95 = q(ttft, 0.95)
        if p95 <= 1.5 * peak_row["p95"] and (best is None or fleet.gpu_seconds < best[1]):
            best = (p95, fleet.gpu_seconds, standing)
    if best is None:
        print("react* meets p95 <= 1.5x the peak fleet's with no standing size up to the peak's")
        return
    print(f"react*, cheapest standing sizes that meet p95 <= 1.5x: {best[2]}: p95 {best[0] / peak_row['p95']:.2f}x"
          f" at {best[1] / peak_row['gpus']:.0%} of the peak fleet's GPU-seconds (target <= 60%)")  # fmt: skip


def follow(fleet: Fleet, t: float, models: dict[str, Model], sizes: dict[str, int]) -> None:
    """Start or stop replicas to reach `sizes` (a stopped replica finishes its requests first)."""
    for name, want in sizes.items():
        live = [r for r in fleet.replicas[name] if not r.stopping]
        for _ in range(want - len(live)):
            fleet.replicas[name].append(Replica(t + models[name].start))
        for r in sorted(live, key=lambda r: (len(r.running), -r.ready_at))[: max(0, len(live) - want)]:
            r.stopping = True


def serve(fleet: Fleet, now: float, models: dict[str, Model]) -> None:
    """Advance what runs by one tick, then give the queues (oldest first) to the least loaded ready
    replica with room. A replica's requests all slow with the size of its batch (`Model.tpot_factor`)."""
    for name, reps in fleet.replicas.items():
        m = models[name]
        for rep in reps:
            slow = m.tpot_factor(len(rep.running))
            for r in rep.running:
                if r.done_at is None and r.first_at is not None and r.first_at < now:
                    r.left -= (now - max(now - DT, r.first_at)) / slow
                    if r.left <= 1e-9:
                        r.done_at = now
            rep.running = [r for r in rep.running if r.done_at is None or r.done_at > now]
            if rep.stopping and not rep.running and rep.gone_at is None:
                rep.gone_at = now + STOP_SECONDS
        fleet.replicas[name] = [r for r in reps if r.gone_at is None or r.gone_at > now]
        queue = fleet.queues.setdefault(name, deque())
        while queue and now - queue[0].arrived > MAX_WAIT:
            queue.popleft().failed = True
        ready = [r for r in fleet.replicas[name] if not r.stopping and r.ready_at <= now]
        while queue and ready and name not in fleet.draining:
            rep = min(ready, key=lambda r: len(r.running))  # the gateway's least-loaded choice
            if len(rep.running) >= m.most:
                break
            req = queue.popleft()
            rep.running.append(req)
            req.started, req.left = now, m.decode
            req.first_at = now + m.prefill * m.ttft_factor(len(rep.running))


def run(reqs: list[Request], minutes: float, models: dict[str, Model], sizes: dict[str, int] | None,
        budget: int, policy: dict[str, Autoscaling], schedule: Schedule | None = None) -> Fleet:  # fmt: skip
    """One fleet over the trace: fixed `sizes`, replicas following a `schedule` of sizes over time, or
    elastic (neither) under the plan and autoscaler."""
    # Elastic starts as the base load leaves it (one replica a model), as the fixed fleets start
    # warm: the trace is a slice of a running service, not its first start.
    initial = schedule(0.0) if schedule else sizes or {n: 1 for n in models}
    fleet = Fleet({n: [Replica(0.0) for _ in range(initial.get(n, 0))] for n in models})
    pending = deque(reqs)
    elastic = _Elastic(models, budget, policy) if sizes is None and schedule is None else None
    t = 0.0
    while t < minutes * 60 or any(fleet.queues.values()) or any(r.running for v in fleet.replicas.values() for r in v):
        while pending and pending[0].arrived <= t:
            req = pending.popleft()
            fleet.queues.setdefault(req.model, deque()).append(req)
        if elastic is not None:
            elastic.step(fleet, t)
        elif schedule is not None:
            follow(fleet, t, models, schedule(t))
        serve(fleet, t, models)
        fleet.gpu_seconds += DT * sum(models[n].gpus * len(v) for n, v in fleet.replicas.items())
        t += DT
        if t > minutes * 60 + 2 * MAX_WAIT:
            break
    return fleet


class _Elastic:
    """What the gateways report and the operator decides, every tick."""

    def __init__(self, models: dict[str, Model], budget: int, policy: dict[str, Autoscaling]) -> None:
        self.models, self.budget, self.policy = models, Budget(budget, min_active=60, idle=120, drain=30), policy
        self.series: dict[str, list[Reading]] = {n: [] for n in models}
        self.answer = {n: 1 for n in models}
        self.reported: dict[str, float] = {}
        self.activated: dict[str, float] = {}
        self.draining: dict[str, float] = {}
        self.last_request: dict[str, float] = {}

    def step(self, fleet: Fleet, t: float) -> None:
        now = EPOCH + t
        views = []
        for name, m in self.models.items():
            reps = fleet.replicas[name]
            queue = fleet.queues.get(name) or deque()
            running = sum(len(r.running) for r in reps)
            live = [r for r in reps if not r.stopping]
            standby = not live
            if queue:
                self.last_request[name] = EPOCH + queue[-1].arrived
            # A gateway holds requests for a standby engine (waiting); for a running one they queue in
            # the engine (in flight). It writes at once for a new wait, and every 10 s while busy ...
            in_flight, waiting = (running, len(queue)) if standby else (running + len(queue), 0)
            due = now - self.reported.get(name, -1e9) >= REPORT_EVERY and (in_flight or waiting)
            first_wait = waiting and not (self.series[name] and self.series[name][-1].waiting)
            # ... and at once when its load asks for another replica than the last report said.
            step = self.policy[name].target_requests_per_replica
            last = self.series[name][-1].load if self.series[name] else 0
            rise = in_flight + waiting >= next_step(last, step)
            if due or first_wait or rise or (not in_flight and not waiting and self.series[name]
                                     and self.series[name][-1].load):  # fmt: skip
                self.series[name].append(Reading("gw", now, in_flight, waiting))
                self.reported[name] = now
            s = autoscale(self.policy[name], self.answer[name], self.series[name], now, EPOCH)
            self.answer[name] = s.replicas
            views.append(DemandView(
                name=name, gpus=m.gpus, spec_replicas=1, deployed=len(live), pods=len(reps),
                ready=any(r.ready_at <= t for r in live), activated_at=self.activated.get(name),
                draining_since=self.draining.get(name),
                demanded_at=EPOCH + queue[0].arrived if standby and queue else None,
                last_request_at=self.last_request.get(name), in_flight=running, drained=running == 0,
                unit=m.gpus, want=s.replicas, load=s.load, need=s.need,
            ))  # fmt: skip
        plan = plan_on_demand(views, self.budget, now)
        for e in plan.events:
            if e.reason == "Activating":
                fleet.swaps[e.engine] = fleet.swaps.get(e.engine, 0) + 1
        for name, d in plan.engines.items():
            live = [r for r in fleet.replicas[name] if not r.stopping]
            if d.activated_at is not None:
                self.activated[name] = d.activated_at
            if d.draining_since is not None:
                self.draining[name] = d.draining_since
                fleet.draining.add(name)  # no new requests: they wait for the next start
            elif name in self.draining and d.state != "draining":
                del self.draining[name]
                fleet.draining.discard(name)
            if d.replicas == 0 and d.state != "draining":
                for r in live:
                    for req in r.running:  # cut by the drain deadline
                        req.failed, req.done_at = True, t
                    r.stopping = True
                continue
            for _ in range(d.replicas - len(live)):
                fleet.replicas[name].append(Replica(t + self.models[name].start))
            for r in sorted(live, key=lambda r: (len(r.running), -r.ready_at))[: max(0, len(live) - d.replicas)]:
                r.stopping = True


def q(xs: list[float], p: float) -> float:
    """The p-quantile of sorted `xs` (nan when empty)."""
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")


def summary(label: str, reqs: list[Request], fleet: Fleet) -> dict[str, float]:
    served = [r for r in reqs if not r.failed and r.done_at is not None]
    ttft = sorted(r.first_at - r.arrived for r in served)  # type: ignore[operator]
    wait = sorted(r.started - r.arrived for r in served)  # type: ignore[operator]
    whole = sorted(r.done_at - r.arrived for r in served)  # type: ignore[operator]

    row = {"p50": q(ttft, 0.5), "p95": q(ttft, 0.95), "p99": q(ttft, 0.99), "w95": q(wait, 0.95),
           "d50": q(whole, 0.5), "d95": q(whole, 0.95), "gpus": fleet.gpu_seconds,
           "swaps": sum(fleet.swaps.values()),
           "failed": sum(1 for r in reqs if r.failed or r.done_at is None)}  # fmt: skip
    print(f"{label:<8} {row['p50']:7.2f} {row['p95']:7.2f} {row['p99']:7.2f}   {row['w95']:7.2f}   {row['d50']:7.2f}"
          f" {row['d95']:7.2f}   {row['gpus']:9.0f}  {row['swaps']:5.0f}  {row['failed']:6.0f}")  # fmt: skip
    return row


def compare(reqs: list[Request], minutes: float, models: dict[str, Model], bound: bool) -> None:
    """The fleets side by side over one trace, on one model of the engines."""
    peak, mean = fixed_sizes(reqs, minutes, models, True), fixed_sizes(reqs, minutes, models, False)
    peak_gpus = sum(models[n].gpus * k for n, k in peak.items())
    budget = max(max(m.gpus for m in models.values()), math.ceil(peak_gpus * 0.75))
    policy = {n: Autoscaling(minReplicas=0, maxReplicas=peak[n] + 1, targetRequestsPerReplica=m.slots,
                             scaleUpSeconds=0, scaleDownSeconds=90) for n, m in models.items()}  # fmt: skip
    print(f"peak fleet {peak} ({peak_gpus} GPUs), mean fleet {mean}, elastic budget {budget} GPUs")
    print(f"{'fleet':<8} {'TTFT p50':>7} {'p95':>7} {'p99':>7}   {'wait p95':>7}   {'done p50':>7} {'p95':>7}"
          f"   {'GPU-s':>9}  {'swaps':>5}  {'failed':>6}")  # fmt: skip
    rows = {}
    fleets: list[tuple[str, dict[str, int] | None, Schedule | None]] = [
        ("peak", peak, None), ("mean", mean, None), ("elastic", None, None),
        ("react*", None, oracle(models, peak, lead=False)), ("foresee*", None, oracle(models, peak, lead=True)),
    ]  # fmt: skip
    for label, sizes, schedule in fleets:
        fresh = [Request(r.model, r.arrived) for r in reqs]
        fleet = run(fresh, minutes, models, sizes, budget, policy, schedule)
        rows[label] = summary(label, fresh, fleet)
    k = rows["peak"]
    for label in ("elastic", "react*", "foresee*"):
        e = rows[label]
        print(f"{label}/peak: p95 TTFT {e['p95'] / k['p95']:.2f}x (target <= 1.5x), GPU-seconds"
              f" {e['gpus'] / k['gpus']:.0%} (target <= 60%), failed {e['failed']:.0f} (target 0);"
              f" p95 to the last token {e['d95'] / k['d95']:.2f}x")  # fmt: skip
    if bound:
        cheapest_reaction(reqs, minutes, models, peak, k)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument(
        "--bound",
        action="store_true",
        help="also search react*'s standing sizes for the cheapest that meets the p95 target (~1 min)",
    )
    args = p.parse_args()
    reqs = trace(args.minutes, args.seed)
    print(f"trace: {len(reqs)} requests over {args.minutes:g} min, 3 models (vllm x2, llamacpp); seed {args.seed};"
          " seconds per request: TTFT, waiting for a place on a replica, and to the last token")  # fmt: skip
    print("\nvLLM replicas batch (up to 64 requests, slowed as vLLM measured itself); llama.cpp ones in 4 slots:")
    compare(reqs, args.minutes, {m.name: m.batching() for m in MODELS}, args.bound)
    print("\nevery replica in fixed slots (8 per vLLM replica, 4 per llama.cpp one; the rest queue):")
    compare(reqs, args.minutes, {m.name: m for m in MODELS}, args.bound)
    print("* knows the bursts (not a policy): react* scales each model to its peak size the instant its burst"
          " starts, foresee* one engine start earlier; react* bounds what any policy that follows the load can"
          " reach on this trace\n")  # fmt: skip
    models = {m.name: m for m in MODELS}

    alt_models = {"small-gguf": models["small-gguf"], "alt-gguf": Model("alt-gguf", "llamacpp", 1, 6.0, 4, 0.1, 3.0)}
    alt = alternating(args.minutes / 3)
    alt_policy = {n: Autoscaling(minReplicas=0, maxReplicas=1, targetRequestsPerReplica=4) for n in alt_models}
    fleet = run(alt, args.minutes / 3, alt_models, None, 1, alt_policy)
    bound = args.minutes * 60 / 3 / 60 + 1  # minActiveSeconds 60
    print(f"alternating trace ({len(alt)} requests, budget 1): swaps per engine {fleet.swaps}, at most {bound:.0f}"
          f" allowed (one per minActiveSeconds); failed {sum(1 for r in alt if r.failed or r.started is None)};"
          f" wait p95 {statistics.quantiles([r.started - r.arrived for r in alt if r.started], n=20)[-1]:.1f}s")  # type: ignore[operator]  # fmt: skip


if __name__ == "__main__":
    main()

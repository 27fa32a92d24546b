"""Standalone mode onDemand: the gateway runs engines as local processes, within the config's budget.

The same planner as the operator's (roundhouse_api.ondemand) decides; here a "replica" is a process.
A start runs the engine's command line (localcmd.py) with its output in a per-engine log, then
polls its health endpoint every 0.25 s, bounded by maxWaitSeconds; a stop drains like the operator's
(no new requests, those running finish, up to drainSeconds), then sends SIGTERM and SIGKILL after
STOP_TIMEOUT. Starts and stops are serialized by one lock. An engine that exits on its own is
reported (phase Failed, its exit code and last log line) and not started again before
CRASH_BACKOFF has passed and a request asks for it: never a restart loop. An engine with
spec.autoscaling runs more processes when its load asks and the budget allows (local_scale.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from roundhouse_api import EngineMode, InferenceEngine, Mode, OnDemandPolicy, runs
from roundhouse_api.families.base import gpu_count
from roundhouse_api.ondemand import Budget, DemandView, plan_on_demand
from roundhouse_gateway.engines.catalog import Catalog, ModeState
from roundhouse_gateway.routing.demand import Demand
from roundhouse_gateway.sources.budget import SWAPS_KEPT, BudgetState, History, Holder, Swap
from roundhouse_gateway.sources.local_scale import Extra, Loads, start_extra, stop_extra
from roundhouse_gateway.sources.localcmd import LOOPBACK, CommandError, local_command, spawn, stop_process

log = logging.getLogger("roundhouse.gateway.local")
HEALTH_POLL = 0.25
TICK = 0.1
STOP_TIMEOUT = 10.0
CRASH_BACKOFF = 30.0


@dataclass
class Local:
    """One engine run by this gateway."""

    ie: InferenceEngine
    log_path: Path
    state: str = "standby"  # standby | starting | ready | draining | stopping | failed
    process: asyncio.subprocess.Process | None = None
    port: int | None = None
    activated_at: float | None = None
    draining_since: float | None = None
    failed_at: float | None = None
    message: str = "on demand: starts when a request needs it"
    starts: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    extras: list[Extra] = field(default_factory=list)  # spec.autoscaling: its other processes

    @property
    def name(self) -> str:
        return self.ie.metadata.name

    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


class LocalEngines:
    """Runs the config's local engines on demand and keeps the gateway's catalog in step."""

    def __init__(self, base: Catalog, engines: list[InferenceEngine], mode: EngineMode, demand: Demand,
                 update: Callable[[Catalog], None], log_dir: Path, cache_dir: Path) -> None:  # fmt: skip
        self.base, self.demand, self.update = base, demand, update
        self.mode = mode
        # Standalone, no nodes to count: unset, the budget fits the largest engine (one such at a time).
        self.budget = Budget.of(mode.spec.on_demand, max((gpu_count(e.spec) for e in engines), default=0))
        self.max_wait = (mode.spec.on_demand or OnDemandPolicy()).max_wait_seconds
        log_dir.mkdir(parents=True, exist_ok=True)
        self.engines = {e.metadata.name: Local(e, log_dir / f"{e.metadata.name}.log") for e in engines}
        self.cache_dir = cache_dir
        self.lock = asyncio.Lock()
        self.http = httpx.AsyncClient(timeout=2.0)
        self.published: tuple[tuple[object, ...], ...] = ()
        self.swaps: deque[Swap] = deque(maxlen=SWAPS_KEPT)
        self.swap_count = 0
        # The mode in force: the config's, until the admin page switches the gateway's own mode.
        self.current_mode: Callable[[], ModeState] = lambda: self.base.mode
        self.history = History()
        self.loads = Loads()

    # --- the loop ---------------------------------------------------------------------------------
    async def run(self) -> None:
        self.publish()
        while True:
            try:
                self.step(time.time())
            except Exception:  # a bug of ours must not stop every engine's lifecycle
                log.exception("on-demand step failed")
            await asyncio.sleep(TICK)

    def views(self, now: float) -> list[DemandView]:
        out = []
        for loc in self.engines.values():
            if loc.state == "failed" and loc.failed_at is not None and now - loc.failed_at >= CRASH_BACKOFF:
                loc.state, loc.message = "standby", f"{loc.message} (may start again on the next request)"
            waits = self.demand.waiting.get(loc.name) or []
            running = loc.state in ("starting", "ready", "draining")
            in_flight = self.demand.in_flight.get(loc.name, 0)
            unit, want, load, need = 0, 0, 0, None
            if (policy := loc.ie.spec.autoscaling) is not None:
                self.loads.sample(loc.name, in_flight, len(waits), now,
                                  max(policy.scale_up_seconds, policy.scale_down_seconds))  # fmt: skip
                scale, unit = self.loads.want(loc.ie, now), gpu_count(loc.ie.spec)
                want, load, need = scale.replicas, scale.load, scale.need
            live = sum(1 for x in loc.extras if not x.stopping)
            out.append(DemandView(
                name=loc.name, gpus=gpu_count(loc.ie.spec), spec_replicas=1, deployed=1 + live if running else 0,
                pods=(1 if loc.alive() else 0) + sum(1 for x in loc.extras if x.alive()),
                ready=loc.state in ("ready", "draining"), unit=unit, want=want, load=load, need=need,
                priority=loc.ie.spec.routing.priority if loc.ie.spec.routing else 0,
                # Only while it drains: once its stop is under way the plan must not stop it again.
                activated_at=loc.activated_at, draining_since=loc.draining_since if loc.state == "draining" else None,
                demanded_at=min(waits) if waits and loc.state != "failed" else None,
                last_request_at=self.demand.last_request.get(loc.name), in_flight=in_flight,
                drained=loc.draining_since is not None and in_flight == 0,
            ))  # fmt: skip
        return out

    def step(self, now: float) -> None:
        """Plan, then start, drain or stop what the plan says."""
        mode = self.current_mode().mode
        if mode != Mode.ON_DEMAND:
            self.manual(mode, now)
            return
        plan = plan_on_demand(self.views(now), self.budget, now)
        for event in plan.events:
            log.info("on-demand step", extra={"engine": event.engine, "step": event.reason, "why": event.message})
            self.swaps.append(Swap(now, event.engine, event.reason, event.message, self._seq()))
        for name, d in plan.engines.items():
            loc = self.engines[name]
            if d.state == "draining" and loc.state == "ready":
                loc.state, loc.draining_since, loc.message = "draining", d.draining_since, d.note
            elif d.replicas > 0 and loc.state == "standby":
                loc.activated_at = d.activated_at
                self._spawn(loc, self.start(loc))
            elif d.replicas == 0 and loc.state in ("starting", "ready", "draining"):
                self._spawn(loc, self.stop(loc, d.note))
            elif loc.state == "standby" and d.state == "waiting":
                loc.message = d.note
            if loc.ie.spec.autoscaling is not None and loc.state == "ready" and d.state == "active":
                self.resize(loc, d.replicas)
        self.publish()

    def resize(self, loc: Local, replicas: int) -> None:
        """Start or stop one extra process at a time, towards `replicas` processes in all."""
        live = [x for x in loc.extras if not x.stopping]
        if any(not x.ready for x in live):
            return  # one is starting: the next step looks again
        if replicas > 1 + len(live):
            extra = Extra(port=free_port())
            loc.extras.append(extra)
            self._spawn(loc, self._run_extra(loc, extra))
        elif replicas < 1 + len(live):
            extra = live[-1]
            extra.stopping, extra.ready = True, False  # out of the catalog before it stops
            self._spawn(loc, self._stop_extra(loc, extra))

    async def _run_extra(self, loc: Local, extra: Extra) -> None:
        if await start_extra(loc.ie, extra, str(self.cache_dir), loc.log_path, self.http, self.max_wait):
            self.publish()
            code = await extra.process.wait() if extra.process else None
            if not extra.stopping:
                log.warning("extra process exited", extra={"engine": loc.name, "port": extra.port, "exit": code})
        else:
            await stop_extra(extra, 0, lambda: False, STOP_TIMEOUT)
        with contextlib.suppress(ValueError):
            if not extra.stopping:
                loc.extras.remove(extra)
        self.publish()

    async def _stop_extra(self, loc: Local, extra: Extra) -> None:
        self.publish()
        await stop_extra(extra, self.budget.drain, lambda: bool(self.demand.in_flight.get(loc.name)), STOP_TIMEOUT)
        with contextlib.suppress(ValueError):
            loc.extras.remove(extra)
        log.info("extra process stopped", extra={"engine": loc.name, "port": extra.port})
        self.publish()

    def manual(self, mode: Mode | None, now: float) -> None:
        """A manual mode (switched to from the admin page): the engines of its families run, the others
        drain (until nothing is in flight on them, at most drainSeconds) and stop first."""
        wanted = {n for n, loc in self.engines.items() if mode is not None and runs(mode, loc.ie.spec.engine)}
        outgoing = [loc for n, loc in self.engines.items() if n not in wanted and loc.alive()]
        for name, loc in self.engines.items():
            if name in wanted:
                if loc.state == "standby" and not outgoing:
                    loc.activated_at = now
                    self._spawn(loc, self.start(loc))
                elif loc.state == "standby":
                    loc.message = "waiting for the outgoing engines to stop"
                continue
            if loc.state in ("starting", "ready"):
                loc.state, loc.draining_since = "draining", now
                loc.message = f"draining: mode {mode.value if mode else 'none'} does not run it"
                self.swaps.append(Swap(now, name, "Draining", f"draining {name} ({loc.message})", self._seq()))
            elif (
                loc.state == "draining"
                and loc.draining_since is not None
                and (not self.demand.in_flight.get(name) or now - loc.draining_since >= self.budget.drain)
            ):
                took = now - loc.draining_since
                self.swaps.append(Swap(now, name, "Stopped", f"scaled {name} to zero after draining {took:.1f}s",
                                       self._seq()))  # fmt: skip
                self._spawn(loc, self.stop(loc, f"stopped: mode {mode.value if mode else 'none'} does not run it"))
        self.publish()

    def _seq(self) -> int:
        self.swap_count += 1
        return self.swap_count

    def _spawn(self, loc: Local, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        loc.tasks.add(task)
        task.add_done_callback(loc.tasks.discard)

    # --- starting and stopping (one at a time) ----------------------------------------------------
    async def start(self, loc: Local) -> None:
        loc.state, loc.message = "starting", "starting its process"
        async with self.lock:
            loc.port = free_port()
            try:
                cmd = local_command(loc.ie, loc.port, str(self.cache_dir))
            except CommandError as err:
                self._failed(loc, str(err))
                return
            loc.starts += 1
            try:
                loc.process = await spawn(cmd, loc.log_path, f"start {loc.starts}")
            except OSError as err:
                self._failed(loc, f"could not run {cmd.argv[0]}: {err}")
                return
            started = time.monotonic()
            log.info("engine process started", extra={"engine": loc.name, "pid": loc.process.pid, "port": loc.port})
            self._spawn(loc, self.watch(loc, loc.process))
            url = f"http://{LOOPBACK}:{loc.port}{cmd.health_path}"
            while loc.alive() and loc.state == "starting" and time.monotonic() - started < self.max_wait:
                with contextlib.suppress(httpx.HTTPError):
                    if (await self.http.get(url)).status_code < 300:
                        loc.state, loc.message = "ready", f"serving on port {loc.port}"
                        took = time.monotonic() - started
                        log.info("engine ready", extra={"engine": loc.name, "seconds": round(took, 3)})
                        self.swaps.append(Swap(time.time(), loc.name, "Activated",
                                               f"{loc.name} is ready {took:.1f}s after it was started",
                                               self._seq()))  # fmt: skip
                        self.publish()
                        return
                await asyncio.sleep(HEALTH_POLL)
            if loc.alive() and loc.state == "starting":
                self._failed(loc, f"{url} did not answer within maxWaitSeconds ({self.max_wait}s)")
                await self._terminate(loc)

    async def stop(self, loc: Local, why: str) -> None:
        loc.state, loc.message = "stopping", why
        for extra in loc.extras:
            extra.stopping, extra.ready = True, False
        self.publish()
        async with self.lock:
            await asyncio.gather(*(stop_extra(x, 0, lambda: False, STOP_TIMEOUT) for x in loc.extras))
            loc.extras.clear()
            await self._terminate(loc)
            loc.state, loc.draining_since = "standby", None
            loc.message = "on demand: starts when a request needs it"
            self.publish()

    async def _terminate(self, loc: Local) -> None:
        proc = loc.process
        if proc is None or proc.returncode is not None:
            return
        await stop_process(proc, STOP_TIMEOUT)
        log.info("engine process stopped", extra={"engine": loc.name, "exit": proc.returncode})

    async def watch(self, loc: Local, proc: asyncio.subprocess.Process) -> None:
        """A process that exits while it should run is a crash: reported, not restarted."""
        code = await proc.wait()
        if loc.process is proc and loc.state in ("starting", "ready", "draining"):
            self._failed(loc, f"its process exited with code {code}: {_last_line(loc.log_path)}")

    def _failed(self, loc: Local, why: str) -> None:
        loc.state, loc.failed_at, loc.message = "failed", time.time(), why
        log.error("engine failed", extra={"engine": loc.name, "error": why, "log": str(loc.log_path)})
        self.publish()

    async def close(self) -> None:
        for loc in self.engines.values():
            if loc.state != "failed":  # stopping them is not a crash (watch() would report one)
                loc.state, loc.message = "stopping", "the gateway is shutting down"
            await asyncio.gather(*(stop_extra(x, 0, lambda: False, STOP_TIMEOUT) for x in loc.extras))
            await self._terminate(loc)
        await self.http.aclose()

    # --- the catalog the router reads -------------------------------------------------------------
    def publish(self) -> None:
        """The base catalog with each local engine's endpoint and phase (only when something changed)."""
        now = tuple((loc.name, loc.state, loc.port, *(x.port for x in loc.extras if x.ready))
                    for loc in self.engines.values())  # fmt: skip
        if now == self.published:
            return
        self.published = now
        self.history.record(time.time(), {h.name: h.held for h in self.holders(time.time())})
        phases = {"standby": "Standby", "starting": "Starting", "ready": "Ready", "draining": "Draining",
                  "stopping": "Standby", "failed": "Failed"}  # fmt: skip
        engines = []
        for e in self.base.engines:
            loc = self.engines.get(e.name)
            if loc is None:
                engines.append(e)
                continue
            serving = loc.state in ("ready", "draining") and loc.port is not None
            ports = [loc.port, *(x.port for x in loc.extras if x.ready)] if serving else []
            engines.append(dataclasses.replace(
                e, endpoints=tuple(f"http://{LOOPBACK}:{p}" for p in ports), ready=loc.state == "ready",
                phase=phases[loc.state], message=loc.message,
            ))  # fmt: skip
        self.update(dataclasses.replace(self.base, engines=tuple(engines), mode=self.current_mode()))

    # --- the admin page's Budget view -----------------------------------------------------------
    def holders(self, now: float) -> list[Holder]:
        """Each local engine's state and GPUs, with the requests this gateway has on it and waiting."""
        out = []
        for loc in self.engines.values():
            waits = self.demand.waiting.get(loc.name) or []
            state = STATES[loc.state]
            if state == "standby" and waits:
                state = "waiting"
            since = {"starting": loc.activated_at, "running": loc.activated_at, "draining": loc.draining_since,
                     "failed": loc.failed_at}.get(state)  # fmt: skip
            out.append(Holder(
                name=loc.name, family=loc.ie.spec.engine.value, state=state,
                gpus=gpu_count(loc.ie.spec) * (1 + sum(1 for x in loc.extras if x.alive())),
                in_flight=self.demand.in_flight.get(loc.name, 0), waiting=len(waits),
                oldest_wait_at=min(waits) if waits else None, since=since, message=loc.message,
            ))  # fmt: skip
        return out

    def budget_state(self, now: float) -> tuple[BudgetState, History]:
        policy = self.mode.spec.on_demand or OnDemandPolicy()
        return BudgetState(self.budget.gpus, tuple(self.holders(now)), tuple(self.swaps), policy), self.history


# A local engine's state in the Budget view's words (budget.Holder).
STATES = {"standby": "standby", "starting": "starting", "ready": "running", "draining": "draining",
          "stopping": "stopping", "failed": "failed"}  # fmt: skip


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_bytes()[-4096:].decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][-300:] if lines else "(no output)"

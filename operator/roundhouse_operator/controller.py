"""Level-triggered reconciliation of one namespace at a time.

Every watch event marks its engine (or, for modes, its whole namespace) dirty; a single worker
reconciles dirty namespaces from the in-memory store: plan the mode over every engine, then
render, apply and write the status of the engines that are dirty or whose plan changed.
Everything is recomputed from observed state, so a restart in the middle of a switch finishes it.
At 1,000 engines in one namespace, reconciling every engine on every pod event cost most of the
operator's CPU; the plan stays namespace-wide because a switch depends on every engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Coroutine
from datetime import UTC, datetime
from typing import Any

import httpx
import urllib3
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from roundhouse_api import (
    EngineMode,
    EngineStatus,
    Family,
    InferenceEngine,
    Mode,
    Phase,
    StoppingReplica,
    governs,
)
from roundhouse_api.autoscaler import Scale
from roundhouse_api.demand import fold
from roundhouse_api.families import DEFAULT_HELPER_IMAGE
from roundhouse_api.ondemand import Budget, DemandPlan, DemandView, plan_on_demand

from . import metrics
from .engine_reconcile import (
    BACKOFF_BASE,
    BACKOFF_MAX,
    MAX_PARALLEL_APPLIES,
    SETTLE_SECONDS,
    EngineReconciling,
    api_message,
)
from .kube import Kube
from .ondemand_status import Seen, budget_of, views
from .plan import EnginePlan, EngineView, ModePlan, plan, wanted
from .probes import Probing
from .render import runs_workload
from .scaling import Autoscaling, History
from .status_writes import PROGRESS_EVERY, StatusWriting
from .store import Store
from .switch import drain_deadline, drain_over

log = logging.getLogger("roundhouse.operator")
RESYNC_SECONDS = 15.0
# An API server that cannot be reached (restarting, storage re-initialising) is retried at least this
# often: once it is back, every namespace is reconciled within seconds, not after a minute's backoff.
UNREACHABLE_BACKOFF_MAX = 5.0
PROBE_TIMEOUT = 5.0
# Passes back to back are spaced by this many times the last one's planning time (at most PACE_MAX_SECONDS):
# a namespace of 1,000 engines takes about 20 ms to plan, and planning on every event used a whole core.
PACE, PACE_MAX_SECONDS = 20.0, 1.0
FAMILY_NAMES = {f.value: f for f in Family}


class Controller(Probing, StatusWriting, Autoscaling, EngineReconciling):
    def __init__(self, store: Store, kube: Kube, helper_image: str | None = None) -> None:
        self.store = store
        self.kube = kube
        # The operator's own image runs the engine pods' fetch and pull helpers; the chart sets it.
        self.helper_image = helper_image or os.environ.get("ROUNDHOUSE_IMAGE") or DEFAULT_HELPER_IMAGE
        # namespace -> engines to reconcile; None: every engine of the namespace.
        self.dirty: dict[str, set[str] | None] = {}
        self.wake = asyncio.Event()
        self.probes: dict[tuple[str, str], tuple[bool, str]] = {}
        # Secrets an engine names that cannot be had, re-checked every SECRET_RECHECK_SECONDS.
        self.missing_secrets: dict[tuple[str, str], str] = {}
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.failures: dict[str, int] = {}
        self.apply_failures: dict[tuple[str, str], int] = {}
        self.phases: dict[tuple[str, str], str] = {}
        self._phase_counts: Counter[str] = Counter()
        for p in Phase:
            metrics.ENGINES.labels(phase=p.value).set(0)
        self._apply_slots = asyncio.Semaphore(MAX_PARALLEL_APPLIES)
        # Parsing validates the whole spec and rendering hashes every object: both depend only on
        # the spec, so they are cached per (uid, generation).
        self._parsed: dict[tuple[str, int], tuple[InferenceEngine | None, str | None]] = {}
        self._rendered: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
        # What the last pass decided per engine: an engine whose plan changes is reconciled even
        # without an event of its own, and a mode's status is built from every engine's last status.
        self._plans: dict[tuple[str, str], EnginePlan] = {}
        self._statuses: dict[tuple[str, str], tuple[str, Family, EngineStatus, bool]] = {}
        self.http = httpx.AsyncClient(timeout=PROBE_TIMEOUT)
        # An engine's apply and status write run as a task of their own, so that a pass never waits
        # for the API server: at 1,000 engines a pass that awaited them took about 4.6 s, and an
        # engine created meanwhile waited that long for its Deployment. One task per engine at a
        # time; an engine marked while its task runs is reconciled again once it is done.
        self._inflight: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._again: set[tuple[str, str]] = set()
        self._settle: dict[tuple[str, str], float] = {}  # engine -> loop time its settling time ends
        self._held: dict[tuple[str, str], EngineStatus] = {}  # engine -> its status, waiting for that time
        self.settle_seconds = SETTLE_SECONDS
        self.progress_every = PROGRESS_EVERY
        self._mode_written: dict[tuple[str, str], float] = {}
        self._progress_due: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._gpu_memo: tuple[list[dict[str, Any]] | None, dict[str | None, int | None]] = (None, {})
        self._planning = 0.0  # seconds the last pass spent planning, which paces the next one
        # spec.autoscaling: the gateways' reports over time, and each engine's last answer.
        self.history = History()
        self._scales: dict[tuple[str, str], Scale] = {}
        self._stopping: dict[tuple[str, str], list[StoppingReplica]] = {}

    def mark(self, namespace: str, engine: str | None = None) -> None:
        """Reconcile `engine` (None: every engine and mode of `namespace`) on the next pass."""
        if engine is None or namespace not in self.dirty:
            self.dirty[namespace] = None if engine is None else {engine}
        elif (engines := self.dirty[namespace]) is not None:
            engines.add(engine)
        self.wake.set()

    def mark_mode(self, namespace: str) -> None:
        """Plan `namespace` and write its modes' status on the next pass, without touching any engine."""
        self.dirty.setdefault(namespace, set())
        self.wake.set()

    def mark_later(self, namespace: str, seconds: float) -> None:
        """Reconcile `namespace` in `seconds`, unless a pass is already due sooner: every pass
        recomputes what is pending (drains, backoffs, re-checks) and asks again."""
        loop = asyncio.get_running_loop()
        when = loop.time() + max(0.0, seconds)
        timer = self.timers.get(namespace)
        if timer is not None and not timer.cancelled() and loop.time() <= timer.when() <= when:
            return
        if timer is not None:
            timer.cancel()
        self.timers[namespace] = loop.call_at(when, self.mark, namespace)

    async def run(self) -> None:
        """Reconcile dirty namespaces forever; every RESYNC_SECONDS everything is dirty (probes, drift)."""
        loop = asyncio.get_running_loop()
        resync_at = loop.time() + RESYNC_SECONDS
        while True:
            # The resync runs on its own clock: a steady stream of events must not postpone it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), max(0.0, resync_at - loop.time()))
            if loop.time() >= resync_at:
                resync_at = loop.time() + RESYNC_SECONDS
                await self.probe_all()
                for namespace in self.store.namespaces():
                    self.mark(namespace)
            self.wake.clear()
            # Let a burst of watch events land before acting on it.
            await asyncio.sleep(max(0.05, min(PACE_MAX_SECONDS, PACE * self._planning)))
            batch, self.dirty = self.dirty, {}
            self._planning = 0.0
            for namespace in sorted(batch):
                await self.reconcile_safely(namespace, batch[namespace], wait=False)

    async def reconcile_safely(self, namespace: str, engines: set[str] | None = None, wait: bool = True) -> None:
        started = time.perf_counter()
        if await self._guarded(namespace, self.reconcile(namespace, engines, wait=wait)):
            metrics.RECONCILES.labels(result="ok").inc()
        metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)

    async def _guarded(self, namespace: str, work: Awaitable[Any]) -> bool:
        """Run a pass or an engine's task; a failure is logged and the namespace retried with backoff."""
        try:
            await work
            self.failures.pop(namespace, None)
            return True
        except ApiException as err:
            gone = err.status == 404 and '"kind":"namespaces"' in str(err.body).replace(" ", "")
            if gone or (err.status == 403 and "NamespaceTerminating" in str(err.body)):
                log.info("namespace is being deleted", extra={"namespace": namespace})
                return False
            self._failed(namespace, err, api_message(err))
        except Exception as err:  # one bad namespace must not stop the others; retry with backoff
            self._failed(namespace, err)
        return False

    def _failed(self, namespace: str, err: Exception, api_error: str | None = None) -> None:
        """Count the failure and retry the namespace later, backing off exponentially. An API server's
        answer, or its absence, is one line with its message; anything else is a bug of ours and keeps
        its traceback."""
        metrics.RECONCILES.labels(result="error").inc()
        failures = self.failures[namespace] = self.failures.get(namespace, 0) + 1
        away = unreachable(err)
        delay = min(UNREACHABLE_BACKOFF_MAX if away else BACKOFF_MAX, BACKOFF_BASE * 2 ** (failures - 1))
        if api_error is None and away:  # connection refused or timed out: not our bug
            api_error = str(err)
        if api_error is not None:
            status = getattr(err, "status", None)
            log.error("reconcile failed", extra={"namespace": namespace, "status": status, "error": api_error,
                                                 "retryIn": delay})  # fmt: skip
        else:
            log.error("reconcile failed", exc_info=err,
                      extra={"namespace": namespace, "error": str(err), "retryIn": delay})  # fmt: skip
        self.mark_later(namespace, delay)

    async def reconcile(self, namespace: str, only: set[str] | None = None, wait: bool = True) -> None:
        """Plan `namespace`; reconcile the engines in `only` (None: all) and those whose plan changed.
        Without `wait` the engines' API calls go on after the pass returns (the run loop's way)."""
        planning = time.perf_counter()
        now = datetime.now(UTC)
        modes = []
        for raw in sorted(self.store.all("EngineMode", namespace), key=lambda m: m["metadata"]["name"]):
            try:
                modes.append(EngineMode.model_validate(raw))
            except ValidationError as err:
                log.warning("invalid EngineMode ignored", extra={"namespace": namespace, "error": str(err)})
        raws = self.store.all("InferenceEngine", namespace)
        parsed = {r["metadata"]["name"]: (r, *self.parse(r)) for r in raws}
        self._autoscale(namespace, modes, parsed, now)

        plans: dict[str, tuple[EngineMode | None, ModePlan]] = {}
        by_mode: dict[str | None, list[str]] = {}
        for name, (raw, _engine, _err) in parsed.items():
            mode = next((m for m in modes if governs(m, raw["metadata"].get("labels") or {})), None)
            by_mode.setdefault(mode.metadata.name if mode else None, []).append(name)
        on_demand: dict[str, tuple[DemandPlan, Budget, list[DemandView]]] = {}
        for mode_name, names in by_mode.items():
            mode = next((m for m in modes if m.metadata.name == mode_name), None)
            if mode is not None and mode.spec.mode == Mode.ON_DEMAND:
                p, on_demand[mode.metadata.name] = await self._plan_on_demand(namespace, mode, names, parsed, now)
                for n in names:
                    plans[n] = (mode, p)
                continue
            views = [self._view(namespace, parsed[n][0], parsed[n][1], mode is not None) for n in names]
            deadline = drain_deadline(mode, now) if mode else None
            draining = deadline is not None and now < deadline and not self._drained(mode, views, now)
            if draining and deadline is not None:
                self.mark_later(namespace, (deadline - now).total_seconds() + 0.05)
            p = plan(mode.spec.mode if mode else None, views, draining=draining)
            for n in names:
                plans[n] = (mode, p)

        targets = [name for name in parsed if only is None or name in only
                   or self._plans.get((namespace, name)) != plans[name][1].engines.get(name)]  # fmt: skip
        nodes = await self._nodes() if targets else []
        started = [self._start_engine(namespace, name, self._reconcile_engine(
            namespace, *parsed[name], plans[name], nodes, now)) for name in targets]  # fmt: skip
        self._planning += time.perf_counter() - planning
        if wait:
            await asyncio.gather(*(t for t in started if t is not None))
        statuses: dict[str, dict[str, tuple[Family, EngineStatus, bool]]] = {}
        for name, (_raw, engine, _err) in parsed.items():
            if cached := self._statuses.get((namespace, name)):
                statuses.setdefault(cached[0], {})[name] = cached[1:]
            elif engine is not None and (governing := plans[name][0]) is not None:
                # Not reconciled yet (just created, or this operator just started): the status it has on
                # the API server counts, and a new engine's none is not ready, so no mode is Ready first.
                seen = (engine.spec.engine, engine.status or EngineStatus(), runs_workload(engine))
                statuses.setdefault(governing.metadata.name, {})[name] = seen
        for mode in modes:
            name = mode.metadata.name
            mode_plan = next((p for (m, p) in plans.values() if m is not None and m.metadata.name == name), ModePlan())
            await self._write_mode_status(mode, mode_plan, statuses.get(mode.metadata.name, {}), now,
                                          on_demand.get(name), parsed)  # fmt: skip

    def stop(self) -> None:
        """Cancel the engines' tasks still running: a replica that lost the lease must stop writing."""
        for task in list(self._inflight.values()):
            task.cancel()

    async def _nodes(self) -> list[dict[str, Any]]:
        """The cluster's nodes; a worker thread only when the cache is stale. A pass must not wait in the
        executor's queue behind the engines' API calls (seconds, under a loaded API server)."""
        cached = self.kube.cached_nodes()
        return cached if cached is not None else await asyncio.to_thread(self.kube.nodes)

    def _start_engine(self, namespace: str, name: str, work: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
        """Run an engine's reconcile as its own task, or, while one runs, once more after it."""
        key = (namespace, name)
        if key in self._inflight:
            work.close()
            self._again.add(key)
            return None
        task = self._inflight[key] = asyncio.create_task(self._engine_task(key, work))
        return task

    async def _engine_task(self, key: tuple[str, str], work: Coroutine[Any, Any, None]) -> None:
        namespace, name = key
        try:
            await self._guarded(namespace, work)
        finally:
            del self._inflight[key]
        if self.store.get("InferenceEngine", namespace, name) is None:
            self.forget(namespace, name)  # deleted while its task ran: what the task recorded goes too
        elif key in self._again:
            self._again.discard(key)
            self.mark(namespace, name)
        elif key in self._statuses:
            # The mode's status is built from its engines' statuses, and the pass that started this
            # task wrote it before the task was done.
            self.mark_mode(namespace)

    def _drained(self, mode: EngineMode | None, views: list[EngineView], now: datetime) -> bool:
        """A switch's drain ends early once every gateway says nothing is in flight on the outgoing engines."""
        if mode is None:
            return False
        outgoing = [v.name for v in views if v.governed and v.runs_workload and v.deployed_replicas
                    and not wanted(mode.spec.mode, v.family)]  # fmt: skip
        return drain_over(mode, outgoing, fold(mode.metadata.annotations, now.timestamp())[1])

    async def _plan_on_demand(
        self, namespace: str, mode: EngineMode, names: list[str],
        parsed: dict[str, tuple[dict[str, Any], InferenceEngine | None, str | None]], now: datetime,
    ) -> tuple[ModePlan, tuple[DemandPlan, Budget, list[DemandView]]]:  # fmt: skip
        """Mode onDemand: who holds the GPUs, from the gateways' reports and what the last pass recorded."""
        seen, result = [], ModePlan()
        for n in names:
            _raw, engine, error = parsed[n]
            if engine is None or error is not None or not runs_workload(engine):
                result.engines[n] = EnginePlan(replicas=engine.spec.replicas if engine else 0, active=True, held=False)
                continue
            deployment = self.store.get("Deployment", namespace, n)
            seen.append(Seen(n, engine, deployment, self.store.holding_pods(namespace, n)))
        demand, reports = fold(mode.metadata.annotations, now.timestamp())
        nodes = await self._nodes() if not (mode.spec.on_demand and mode.spec.on_demand.gpu_budget is not None) else []
        budget = budget_of(mode, nodes)
        scales = {n: s for (ns, n), s in self._scales.items() if ns == namespace}
        dviews = views(mode, seen, demand, reports, scales)
        dplan = plan_on_demand(dviews, budget, now.timestamp())
        for n, d in dplan.engines.items():
            result.engines[n] = EnginePlan(replicas=d.replicas, active=True, held=d.state == "waiting", state=d.state,
                                           note=d.note)  # fmt: skip
        if dplan.wake_in is not None:
            self.mark_later(namespace, dplan.wake_in + 0.05)
        return result, (dplan, budget, dviews)

    def _view(self, namespace: str, raw: dict[str, Any], engine: InferenceEngine | None, governed: bool) -> EngineView:
        name = raw["metadata"]["name"]
        deployment = self.store.get("Deployment", namespace, name)
        deployed = int(((deployment or {}).get("spec") or {}).get("replicas", 0) or 0)
        family = engine.spec.engine if engine else FAMILY_NAMES.get(raw["spec"].get("engine"), Family.VLLM)
        scale = self._scales.get((namespace, name))
        return EngineView(
            name=name,
            family=family,
            spec_replicas=scale.replicas if scale else engine.spec.replicas if engine else deployed,
            deployed_replicas=deployed,
            pods=self.store.holding_pods(namespace, name),
            runs_workload=runs_workload(engine) if engine else True,
            governed=governed,
        )

    def count_phase(self, namespace: str, name: str, phase: str | None) -> None:
        """Keep the engines-by-phase gauge current: only the two phases that changed are touched
        (recounting every engine on every status was quadratic at 1,000 engines)."""
        key = (namespace, name)
        old = self.phases.get(key)
        if old == phase:
            return
        if phase is None:
            self.phases.pop(key, None)
            with contextlib.suppress(KeyError):
                metrics.ENGINE_OK.remove(namespace, name)
        else:
            self.phases[key] = phase
            metrics.ENGINE_OK.labels(namespace, name).set(1 if phase in (Phase.READY, Phase.STANDBY) else 0)
        for value, delta in ((old, -1), (phase, 1)):
            if value is not None:
                self._phase_counts[value] += delta
                metrics.ENGINES.labels(phase=value).set(self._phase_counts[value])

    def forget(self, namespace: str, name: str, uid: str = "") -> None:
        self.count_phase(namespace, name, None)  # a deleted engine leaves the gauge at once
        self.probes.pop((namespace, name), None)
        self.missing_secrets.pop((namespace, name), None)
        self._plans.pop((namespace, name), None)
        self._statuses.pop((namespace, name), None)
        self._settle.pop((namespace, name), None)
        self._held.pop((namespace, name), None)
        self._scales.pop((namespace, name), None)
        self._stopping.pop((namespace, name), None)
        for key in [k for k in self._parsed if k[0] == uid]:
            del self._parsed[key]
        for rkey in [k for k in self._rendered if k[0] == uid]:
            del self._rendered[rkey]

    def referencing(self, namespace: str, name: str) -> list[str]:
        """Engines of the namespace whose spec.routing.fallback names `name`."""
        return self.store.referencing(namespace, name)


def unreachable(err: Exception) -> bool:
    """The API server did not answer, or answered that it cannot serve now (429, 5xx): a transient
    outage, unlike a refusal, which only an edit can fix."""
    if isinstance(err, ApiException):
        return err.status in (0, None, 429) or (err.status or 0) >= 500
    return isinstance(err, (urllib3.exceptions.HTTPError, OSError, TimeoutError))

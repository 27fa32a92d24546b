"""One engine's reconcile, run as a task of its own after a pass planned it (controller.py): parse and
render (cached per spec), apply what changed, drain a scale-down first, and write the status from
what was observed."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from roundhouse_api import CEL_CONTEXT_KEY, EngineMode, EngineStatus, Family, InferenceEngine, Phase
from roundhouse_api.autoscaler import Scale
from roundhouse_api.families import FAMILIES

from . import adapters, metrics
from .fit import estimate
from .kube import Kube
from .plan import EnginePlan, ModePlan
from .render import HASH_ANNOTATION, render, runs_workload
from .scaling import scaling_status
from .settling import SETTLING_PHASES, may_wait
from .status import Observed, engine_status
from .stopping import Step
from .store import Store

log = logging.getLogger("roundhouse.operator")
BACKOFF_BASE, BACKOFF_MAX = 0.5, 60.0
SECRET_RECHECK_SECONDS = 3.0
MAX_PARALLEL_APPLIES = 16
# An applied Deployment is acted on by the controller-manager, the scheduler and the kubelet within
# seconds; what an engine says meanwhile (settling.py: coming up, counts) waits that long, so that a quick
# engine's first write says Ready (at 1,000 engines, writing every step cost an API request per engine
# more than the apply). Under a 100-engine switch the incoming pods take 3-5 s.
SETTLE_SECONDS = 5.0
# API server answers that mean the rendered object itself is refused (not a passing failure).
REFUSED_STATUSES = {400, 403, 422}


class ApplyRefused(Exception):
    """The API server refused an object rendered for an engine: its kind and the server's own message."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind, self.message = kind, message


def api_message(err: ApiException) -> str:
    """The API server's own message (it names the field), else the HTTP reason."""
    try:
        return str(json.loads(err.body or "{}").get("message") or err.reason)
    except (ValueError, AttributeError):
        return str(err.reason)


def config_error(raw: dict[str, Any]) -> tuple[InferenceEngine | None, str | None]:
    """Parse an engine; what the schema could not refuse becomes a ConfigValid=False message.

    The CRD's CEL rules are not run again: the API server enforced them on every write, and
    evaluating them in Python was a sixth of the operator's CPU at 1,000 engines."""
    try:
        engine = InferenceEngine.model_validate(raw, context={CEL_CONTEXT_KEY: False})
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        return None, problems
    if engine.spec.vllm and engine.spec.vllm.nodes > 1:
        return engine, "spec.vllm.nodes > 1 needs LeaderWorkerSet, which this operator does not drive yet"
    return engine, None


def gpu_memory_mib(nodes: list[dict[str, Any]], engine: InferenceEngine) -> int | None:
    """Smallest per-GPU memory among GPU nodes the engine may land on (GPU Feature Discovery labels)."""
    sizes = []
    for node in nodes:
        labels = node["labels"]
        if "nvidia.com/gpu.memory" not in labels:
            continue
        if engine.spec.gpu_product and labels.get("nvidia.com/gpu.product") != engine.spec.gpu_product:
            continue
        try:
            sizes.append(int(labels["nvidia.com/gpu.memory"]))
        except ValueError:
            continue
    return min(sizes) if sizes else None


class EngineReconciling:
    """The Controller's per-engine half: the caches and records it keeps are the Controller's."""

    store: Store
    kube: Kube
    http: httpx.AsyncClient
    helper_image: str
    probes: dict[tuple[str, str], tuple[bool, str]]
    missing_secrets: dict[tuple[str, str], str]
    apply_failures: dict[tuple[str, str], int]
    settle_seconds: float
    _apply_slots: asyncio.Semaphore
    _parsed: dict[tuple[str, int], tuple[InferenceEngine | None, str | None]]
    _rendered: dict[tuple[str, int, int], list[dict[str, Any]]]
    _plans: dict[tuple[str, str], EnginePlan]
    _statuses: dict[tuple[str, str], tuple[str, Family, EngineStatus, bool]]
    _settle: dict[tuple[str, str], float]
    _held: dict[tuple[str, str], EngineStatus]
    _gpu_memo: tuple[list[dict[str, Any]] | None, dict[str | None, int | None]]
    _scales: dict[tuple[str, str], Scale]

    if TYPE_CHECKING:

        def mark(self, namespace: str, engine: str | None = None) -> None: ...

        def mark_later(self, namespace: str, seconds: float) -> None: ...

        def count_phase(self, namespace: str, name: str, phase: str | None) -> None: ...

        async def probe(self, engine: InferenceEngine) -> None: ...

        async def _write_invalid(self, raw: dict[str, Any], error: str, previous: EngineStatus | None,
                                 now: datetime) -> None: ...  # fmt: skip

        async def _write_engine_status(self, raw: dict[str, Any], status: EngineStatus,
                                       previous: EngineStatus | None) -> None: ...  # fmt: skip

        async def _stop_replicas(self, raw: dict[str, Any], target: int, mode: EngineMode | None,
                                 previous: EngineStatus | None, now: datetime) -> Step: ...  # fmt: skip

    async def _reconcile_engine(
        self,
        namespace: str,
        raw: dict[str, Any],
        engine: InferenceEngine | None,
        error: str | None,
        mode_plan: tuple[EngineMode | None, ModePlan],
        nodes: list[dict[str, Any]],
        now: datetime,
    ) -> None:
        name = raw["metadata"]["name"]
        mode, p = mode_plan
        key = (namespace, name)
        self._plans[key] = p.engines[name]
        # Decisions (transitions, scaling events, the replicas stopping) read the last status computed,
        # held or written; the write itself is a patch from what the API server has.
        written = self._written_status(raw)
        previous = self._held.get(key, written)
        if engine is None:
            self._statuses.pop(key, None)
            self.count_phase(namespace, name, Phase.FAILED.value)
            self._held.pop(key, None)
            await self._write_invalid(raw, error or "invalid spec", written, now)
            return
        ep = p.engines[name]
        if raw["metadata"].get("deletionTimestamp"):
            return  # being deleted: the garbage collector takes its objects away
        apply_error = None
        stop = None
        if error is None and runs_workload(engine):  # a scale-down drains the replicas it stops first
            stop = await self._stop_replicas(raw, ep.replicas, mode, previous, now)
        if error is None:
            try:
                replicas = stop.replicas if stop is not None else ep.replicas
                if await self._apply_changed(namespace, self.render(engine, replicas)):
                    self._settling(key)
                self.apply_failures.pop(key, None)
            except ApplyRefused as refused:
                apply_error = (refused.kind, refused.message)
                self._refused(key, refused)
        if not runs_workload(engine) and (key not in self.probes or key in self.missing_secrets):
            await self.probe(engine)
        if key in self.missing_secrets:
            self.mark_later(namespace, SECRET_RECHECK_SECONDS)
        pods = self.store.owned("Pod", namespace, name)
        adapter_report = None
        if error is None and ep.active and FAMILIES[engine.spec.engine].runtime_adapters(engine.spec):
            adapter_report = await adapters.sync(self.http, engine, adapters.replica_urls(engine, pods))
        observed = Observed(
            engine=engine,
            plan=ep,
            deployment=self.store.get("Deployment", namespace, name),
            pods=pods,
            fit=estimate(engine.spec, self._gpu_memory(nodes, engine)),
            config_error=error,
            probe_ok=self.probes.get((namespace, name), (None, ""))[0],
            probe_message=self.probes.get((namespace, name), (None, ""))[1],
            mode_name=mode.metadata.name if mode else None,
            apply_error=apply_error,
            missing_fallbacks=self.missing_fallbacks(namespace, engine),
            missing_secret=self.missing_secrets.get(key),
            adapters=adapter_report,
        )
        status = engine_status(observed, previous, now)
        status.stopping = stop.stopping if stop is not None else []
        if (scale := self._scales.get(key)) is not None and status.desired_replicas is not None:
            status.scaling, event = scaling_status(scale, status.desired_replicas, ep.note, previous, now)
            if event is not None:
                metrics.SCALINGS.labels(direction=event.reason).inc()
                await asyncio.to_thread(self.kube.event, raw, "Normal", event.reason, event.message)
        self.count_phase(namespace, name, status.phase.value if status.phase else "")
        if mode is not None:
            self._statuses[key] = (mode.metadata.name, engine.spec.engine, status, runs_workload(engine))
        else:
            self._statuses.pop(key, None)
        activated = written is not None and written.phase == Phase.STANDBY and status.phase in SETTLING_PHASES
        if activated and key not in self._settle:
            self._settling(key)  # held for the outgoing pods, or started without an apply of its own
        if self._settle.get(key, 0.0) > asyncio.get_running_loop().time() and may_wait(written, status):
            self._held[key] = status  # written once it settles, unless something that must go comes first
            return
        self._held.pop(key, None)
        await self._write_engine_status(raw, status, written)

    def _settling(self, key: tuple[str, str]) -> None:
        """Let the engine's status wait (settling.py) until what was just applied has settled."""
        if self.settle_seconds <= 0:
            return
        loop = asyncio.get_running_loop()
        self._settle[key] = loop.time() + self.settle_seconds
        loop.call_later(self.settle_seconds + 0.01, self._settled, key)

    def _settled(self, key: tuple[str, str]) -> None:
        """The settling time is over: a status still held is written by the engine's next reconcile."""
        due = self._settle.get(key)
        if due is None or due > asyncio.get_running_loop().time():
            return  # forgotten, or settling again (a later timer is due)
        del self._settle[key]
        if key in self._held:
            self.mark(*key)

    def _gpu_memory(self, nodes: list[dict[str, Any]], engine: InferenceEngine) -> int | None:
        """gpu_memory_mib, once per node listing and GPU product (the listing is cached by Kube)."""
        if self._gpu_memo[0] is not nodes:
            self._gpu_memo = (nodes, {})
        product = engine.spec.gpu_product
        if product not in self._gpu_memo[1]:
            self._gpu_memo[1][product] = gpu_memory_mib(nodes, engine)
        return self._gpu_memo[1][product]

    def parse(self, raw: dict[str, Any]) -> tuple[InferenceEngine | None, str | None]:
        meta = raw["metadata"]
        key = (str(meta.get("uid", "")), int(meta.get("generation", 0)))
        if key not in self._parsed:
            self._parsed[key] = config_error(raw)
        return self._parsed[key]

    def render(self, engine: InferenceEngine, replicas: int) -> list[dict[str, Any]]:
        key = (engine.metadata.uid, engine.metadata.generation, replicas)
        if key not in self._rendered:
            self._rendered[key] = render(engine, replicas, self.helper_image)
        return self._rendered[key]

    def _previous_status(self, raw: dict[str, Any]) -> EngineStatus | None:
        """The engine's last status as this process decided it: held for the settling time, else written."""
        meta = raw["metadata"]
        held = self._held.get((meta.get("namespace", ""), meta["name"]))
        return held if held is not None else self._written_status(raw)

    def _written_status(self, raw: dict[str, Any]) -> EngineStatus | None:
        """The status on the API server; None for a new engine's (none written yet)."""
        if not raw.get("status"):
            return None
        try:
            return EngineStatus.model_validate(raw["status"])
        except ValidationError:
            return None

    def missing_fallbacks(self, namespace: str, engine: InferenceEngine) -> list[str]:
        """The engines spec.routing.fallback names that do not exist in the namespace."""
        wanted = engine.spec.routing.fallback if engine.spec.routing else []
        return [n for n in wanted if self.store.get("InferenceEngine", namespace, n) is None]

    def _refused(self, key: tuple[str, str], refused: ApplyRefused) -> None:
        """One structured line (no traceback) and a retry with exponential backoff."""
        failures = self.apply_failures[key] = self.apply_failures.get(key, 0) + 1
        delay = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (failures - 1))
        log.warning("apply refused", extra={"engine": f"{key[0]}/{key[1]}", "kind": refused.kind,
                                            "error": refused.message, "retryIn": delay})  # fmt: skip
        metrics.RECONCILES.labels(result="refused").inc()
        self.mark_later(key[0], delay)

    async def _apply_changed(self, namespace: str, objects: list[dict[str, Any]]) -> bool:
        """Apply the objects whose rendered hash differs from the stored one; whether a Deployment was."""
        deployment = False
        for obj in objects:
            current = self.store.get(obj["kind"], namespace, obj["metadata"]["name"])
            current_hash = ((current or {}).get("metadata", {}).get("annotations") or {}).get(HASH_ANNOTATION)
            if current is not None and current_hash == obj["metadata"]["annotations"][HASH_ANNOTATION]:
                continue
            async with self._apply_slots:
                try:
                    stored = await asyncio.to_thread(self.kube.apply, obj)
                except ApiException as err:
                    if err.status in REFUSED_STATUSES and "NamespaceTerminating" not in str(err.body):
                        raise ApplyRefused(obj["kind"], api_message(err)) from None
                    raise
            self.store.put(obj["kind"], stored)
            metrics.APPLIES.labels(kind=obj["kind"]).inc()
            deployment = deployment or obj["kind"] == "Deployment"
        return deployment

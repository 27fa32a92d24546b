"""The controller's passes with the API server faked at its boundary (Kube): which engines a watch
event makes it touch, and what the store keeps."""

from __future__ import annotations

import asyncio
import copy
import itertools
import threading
from typing import Any

from roundhouse_operator.controller import Controller
from roundhouse_operator.status_writes import progress_only
from roundhouse_operator.store import Store, slim

NS = "ns"


class FakeKube:
    """Records writes and answers them the way the API server would (a new resourceVersion)."""

    def __init__(self) -> None:
        self.rv = itertools.count(100)
        self.applied: list[str] = []
        self.status_patched: list[str] = []

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.applied.append(f"{obj['kind']}/{obj['metadata']['name']}")
        out = copy.deepcopy(obj)
        out["metadata"].update(namespace=NS, uid=f"uid-{obj['kind']}-{obj['metadata']['name']}",
                               resourceVersion=str(next(self.rv)))  # fmt: skip
        return out

    def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        self.status_patched.append(f"{kind}/{name}")
        current = self.store.get(kind, namespace, name)
        assert current is not None
        out = copy.deepcopy(current)
        out["status"] = {k: v for k, v in {**(current.get("status") or {}), **status}.items() if v is not None}
        out["metadata"]["resourceVersion"] = str(next(self.rv))
        return out

    def event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        pass

    def nodes(self) -> list[dict[str, Any]]:
        return []

    def cached_nodes(self) -> list[dict[str, Any]] | None:
        return None


def ie(name: str, family: str = "vllm") -> dict[str, Any]:
    return {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine",
            "metadata": {"name": name, "namespace": NS, "uid": f"u-{name}", "generation": 1, "resourceVersion": "1"},
            "spec": {"engine": family, "model": {"source": "org/m", "servedName": name}}}  # fmt: skip


def em(mode: str) -> dict[str, Any]:
    return {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "EngineMode",
            "metadata": {"name": "default", "namespace": NS, "uid": "u-em", "generation": 1, "resourceVersion": "1"},
            "spec": {"mode": mode, "switchPolicy": {"drainSeconds": 0}}}  # fmt: skip


def pod(engine: str, phase: str = "Running") -> dict[str, Any]:
    return {"metadata": {"name": f"{engine}-pod", "namespace": NS, "uid": f"p-{engine}", "resourceVersion": "50",
                         "labels": {"roundhouse.dev/engine": engine}, "managedFields": [{"manager": "x"}]},
            "spec": {"containers": [{"name": "engine", "image": "big", "args": ["--a"] * 100}]},
            "status": {"phase": phase, "conditions": [{"type": "PodScheduled", "status": "True"}]}}  # fmt: skip


def controller(*objects: tuple[str, dict[str, Any]]) -> tuple[Controller, FakeKube]:
    kube = FakeKube()
    store = Store()
    kube.store = store  # type: ignore[attr-defined]
    for kind, body in objects:
        store.put(kind, body)
    c = Controller(store, kube)  # type: ignore[arg-type]
    c.settle_seconds = 0  # statuses written in the pass that changes them (settling has its own test)
    return c, kube


def test_a_pod_event_reconciles_only_its_engine() -> None:
    c, kube = controller(*[("InferenceEngine", ie(n)) for n in ("a", "b", "c")])
    asyncio.run(c.reconcile(NS))
    assert sorted(kube.applied) == sorted(f"{k}/{n}" for n in "abc" for k in ("Deployment", "Service"))
    assert sorted(kube.status_patched) == ["InferenceEngine/a", "InferenceEngine/b", "InferenceEngine/c"]
    kube.applied.clear()
    kube.status_patched.clear()

    c.store.put("Pod", pod("b"))
    asyncio.run(c.reconcile(NS, {"b"}))
    assert kube.applied == []  # nothing to re-apply: the spec did not change
    assert kube.status_patched == ["InferenceEngine/b"]  # b has a pod now; a and c were not looked at


def test_an_engine_whose_plan_changes_is_reconciled_without_an_event_of_its_own() -> None:
    # Mode ollama: the vLLM engine's pod still runs, so the Ollama engine is held at 0 replicas.
    c, kube = controller(("EngineMode", em("ollama")), ("InferenceEngine", ie("v", "vllm")),
                         ("InferenceEngine", ie("o", "ollama")), ("Pod", pod("v")))  # fmt: skip
    asyncio.run(c.reconcile(NS))
    assert c.store.get("Deployment", NS, "o")["spec"]["replicas"] == 0  # type: ignore[index]
    assert c.store.get("EngineMode", NS, "default")["status"]["phase"] == "Switching"  # type: ignore[index]
    kube.applied.clear()

    c.store.remove("Pod", pod("v"))  # the outgoing pod is gone: an event about v only
    asyncio.run(c.reconcile(NS, {"v"}))
    assert "Deployment/o" in kube.applied  # o's plan changed (held -> 1 replica): applied all the same
    assert c.store.get("Deployment", NS, "o")["spec"]["replicas"] == 1  # type: ignore[index]


def test_the_mode_status_counts_every_engine_not_only_the_dirty_ones() -> None:
    c, _ = controller(("EngineMode", em("vllm")), *[("InferenceEngine", ie(n)) for n in ("a", "b", "c")])
    asyncio.run(c.reconcile(NS))
    c.store.put("Pod", pod("a"))
    asyncio.run(c.reconcile(NS, {"a"}))
    engines = c.store.get("EngineMode", NS, "default")["status"]["engines"]  # type: ignore[index]
    assert sorted(e["name"] for e in engines) == ["a", "b", "c"]


def test_the_store_keeps_only_what_the_controller_reads() -> None:
    kept = slim("Pod", pod("a"))
    assert "spec" not in kept and "managedFields" not in kept["metadata"]
    assert kept["status"]["phase"] == "Running" and kept["metadata"]["labels"] == {"roundhouse.dev/engine": "a"}
    deployment = {"metadata": {"name": "a", "managedFields": [1], "annotations": {"h": "1"}},
                  "spec": {"replicas": 2, "template": {"spec": {"containers": [{}]}}},
                  "status": {"readyReplicas": 2}}  # fmt: skip
    assert slim("Deployment", deployment) == {"metadata": {"name": "a", "annotations": {"h": "1"}},
                                              "spec": {"replicas": 2}, "status": {"readyReplicas": 2}}  # fmt: skip
    engine = ie("a")
    assert slim("InferenceEngine", engine) == engine


def test_the_engines_by_phase_gauge_follows_reconciles_and_deletions() -> None:
    from prometheus_client import REGISTRY

    def gauge_total() -> float:
        return sum(REGISTRY.get_sample_value("roundhouse_operator_engines", {"phase": p}) or 0.0
                   for p in ("Pending", "Starting", "Ready", "Degraded", "Failed", "Standby", ""))  # fmt: skip

    c, _ = controller(*[("InferenceEngine", ie(n)) for n in ("a", "b", "c")])
    asyncio.run(c.reconcile(NS))
    assert gauge_total() == 3
    c.store.put("Pod", pod("a"))
    asyncio.run(c.reconcile(NS, {"a"}))  # a changes phase: still three engines counted once each
    assert gauge_total() == 3
    c.forget(NS, "b", "u-b")
    assert gauge_total() == 2


def test_the_resync_runs_on_its_clock_while_events_keep_arriving(monkeypatch: Any) -> None:
    monkeypatch.setattr("roundhouse_operator.controller.RESYNC_SECONDS", 0.3)
    c, _ = controller(("InferenceEngine", ie("a")))
    resyncs: list[float] = []

    async def probe_all() -> None:
        resyncs.append(asyncio.get_running_loop().time())

    c.probe_all = probe_all  # type: ignore[method-assign]

    async def main() -> None:
        runner = asyncio.create_task(c.run())
        for _ in range(30):  # an event every 0.05 s: sooner than the resync, for 1.5 s
            c.mark("other")
            await asyncio.sleep(0.05)
        runner.cancel()

    asyncio.run(main())
    assert len(resyncs) >= 3, resyncs


def test_an_unreachable_api_server_is_retried_within_seconds_and_a_refusal_backs_off() -> None:
    import urllib3
    from kubernetes.client.exceptions import ApiException

    from roundhouse_operator.controller import UNREACHABLE_BACKOFF_MAX, unreachable

    refused = urllib3.exceptions.MaxRetryError(None, "/api", urllib3.exceptions.NewConnectionError(None, "refused"))
    assert unreachable(refused) and unreachable(ConnectionRefusedError())
    assert unreachable(ApiException(status=429)) and unreachable(ApiException(status=503))
    assert not unreachable(ApiException(status=422)) and not unreachable(ValueError("a bug"))

    async def delays(err: Exception) -> list[float]:
        c, _ = controller()
        for _ in range(10):  # each retry fails again once its timer has fired
            if (pending := c.timers.pop(NS, None)) is not None:
                pending.cancel()
            c._failed(NS, err)
        timer = c.timers[NS]
        return [timer.when() - asyncio.get_running_loop().time()]

    assert asyncio.run(delays(refused))[0] <= UNREACHABLE_BACKOFF_MAX
    assert asyncio.run(delays(ApiException(status=422)))[0] > 30


class SlowKube(FakeKube):
    """Applies for the engines named in `held` wait until released, as under a loaded API server."""

    def __init__(self, held: set[str]) -> None:
        super().__init__()
        self.held, self.release = held, threading.Event()

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        if obj["metadata"]["name"] in self.held:
            assert self.release.wait(5)
        return super().apply(obj)


def test_a_pass_does_not_wait_for_an_engine_whose_api_calls_are_slow() -> None:
    kube = SlowKube(held={"slow"})
    store = Store()
    kube.store = store  # type: ignore[attr-defined]
    store.put("InferenceEngine", ie("slow"))
    c = Controller(store, kube)  # type: ignore[arg-type]
    c.settle_seconds = 0

    async def scenario() -> None:
        await c.reconcile(NS, wait=False)  # the pass returns while slow's apply hangs
        store.put("InferenceEngine", ie("new"))
        await c.reconcile(NS, {"new", "slow"}, wait=False)  # slow is still in flight: once more, later
        for _ in range(100):
            if "InferenceEngine/new" in kube.status_patched:
                break
            await asyncio.sleep(0.01)
        assert "Deployment/new" in kube.applied and "Deployment/slow" not in kube.applied
        assert c.dirty == {}
        kube.release.set()
        for _ in range(100):
            if c.dirty:
                break
            await asyncio.sleep(0.01)
        assert c.dirty == {NS: {"slow"}}  # marked while in flight: reconciled again now that it is done
        assert kube.status_patched.count("InferenceEngine/slow") == 1

    asyncio.run(scenario())


def test_a_new_engines_first_status_waits_while_it_settles_but_never_holds_back_ready() -> None:
    """Created, scheduled and ready within the settling time: one status write, saying Ready."""
    c, kube = controller(("InferenceEngine", ie("a")), ("InferenceEngine", ie("b")))
    c.settle_seconds = 0.3

    async def scenario() -> None:
        await c.reconcile(NS)
        assert sorted(kube.applied) == ["Deployment/a", "Deployment/b", "Service/a", "Service/b"]
        assert kube.status_patched == []
        c.store.put("Pod", pod("a"))
        c.store.put("Pod", pod("b"))
        await c.reconcile(NS, {"a", "b"})  # pod events while settling: nothing written yet
        assert kube.status_patched == [] and c.phases[(NS, "a")] == "Starting"  # the gauges do not wait
        ready = copy.deepcopy(c.store.get("Deployment", NS, "a"))
        assert ready is not None
        ready["status"] = {"replicas": 1, "readyReplicas": 1}
        ready["metadata"]["resourceVersion"] = "900"
        c.store.put("Deployment", ready)
        await c.reconcile(NS, {"a"})  # a is Ready: written at once, settling or not
        assert kube.status_patched == ["InferenceEngine/a"]
        assert c.store.get("InferenceEngine", NS, "a")["status"]["phase"] == "Ready"  # type: ignore[index]
        await asyncio.sleep(0.35)
        assert c.dirty == {NS: {"b"}}  # the settling time ran out: b's held status is due; a has nothing held
        await c.reconcile(NS, {"b"})
        assert kube.status_patched == ["InferenceEngine/a", "InferenceEngine/b"]  # b: still Starting
        stored = copy.deepcopy(c.store.get("InferenceEngine", NS, "b"))
        assert stored is not None and stored["status"]["phase"] == "Starting"
        stored["spec"]["replicas"] = 3
        stored["metadata"].update(generation=2, resourceVersion="999")
        c.store.put("InferenceEngine", stored)
        await c.reconcile(NS, {"b"})  # a changed engine's status is written at once: never a stale Ready
        assert kube.status_patched[-1] == "InferenceEngine/b" and len(kube.status_patched) == 3

    asyncio.run(scenario())


def test_a_mode_is_not_ready_while_an_engine_it_governs_is_still_being_reconciled() -> None:
    """A hundred engines applied with their mode: a pass that has reconciled only some of them must not
    call the mode Ready (`kubectl wait` on it would return before the engines exist)."""
    kube = SlowKube(held={"slow"})
    store = Store()
    kube.store = store  # type: ignore[attr-defined]
    store.put("EngineMode", em("vllm"))
    for name in ("fast", "slow"):
        store.put("InferenceEngine", ie(name))
    c = Controller(store, kube)  # type: ignore[arg-type]
    c.settle_seconds = c.progress_every = 0

    async def scenario() -> None:
        await c.reconcile(NS, wait=False)  # fast's reconcile goes on; slow's apply hangs
        for _ in range(100):
            if "Deployment/fast" in kube.applied:
                break
            await asyncio.sleep(0.01)
        store.put("Pod", pod("fast"))
        ready = copy.deepcopy(store.get("Deployment", NS, "fast"))
        assert ready is not None
        ready["status"] = {"replicas": 1, "readyReplicas": 1}
        ready["metadata"]["resourceVersion"] = "900"
        store.put("Deployment", ready)
        await c.reconcile(NS, {"fast"})  # fast is Ready; slow has no status yet
        assert store.get("InferenceEngine", NS, "fast")["status"]["phase"] == "Ready"  # type: ignore[index]
        status = store.get("EngineMode", NS, "default")["status"]  # type: ignore[index]
        assert status["phase"] == "Switching" and status["message"] == "switching to vllm: waiting for slow", status
        assert sorted(e["name"] for e in status["engines"]) == ["fast", "slow"]
        kube.release.set()

    asyncio.run(scenario())


def test_a_switchs_progress_is_written_at_most_once_a_period_and_its_end_at_once() -> None:
    c, kube = controller(("EngineMode", em("ollama")), ("InferenceEngine", ie("v1", "vllm")),
                         ("InferenceEngine", ie("v2", "vllm")), ("InferenceEngine", ie("o", "ollama")),
                         ("Pod", pod("v1")), ("Pod", pod("v2")))  # fmt: skip
    c.progress_every = 0.3

    def mode() -> dict[str, Any]:
        return c.store.get("EngineMode", NS, "default")["status"]  # type: ignore[index,no-any-return]

    async def scenario() -> None:
        await c.reconcile(NS)
        assert mode()["message"] == "switching to ollama: 2 outgoing pod(s) stopping"
        writes = kube.status_patched.count("EngineMode/default")
        c.store.remove("Pod", pod("v1"))
        await c.reconcile(NS, {"v1"})
        assert kube.status_patched.count("EngineMode/default") == writes  # a count only: held back
        assert mode()["message"] == "switching to ollama: 2 outgoing pod(s) stopping"
        await asyncio.sleep(0.35)
        assert NS in c.dirty  # ... and due once the period is over
        await c.reconcile(NS, set())
        assert mode()["message"] == "switching to ollama: 1 outgoing pod(s) stopping"
        c.store.remove("Pod", pod("v2"))
        await c.reconcile(NS, {"v2"})  # the outgoing pods are gone: o starts (a count again: held)
        ready = copy.deepcopy(c.store.get("Deployment", NS, "o"))
        assert ready is not None and ready["spec"]["replicas"] == 1
        ready["status"] = {"replicas": 1, "readyReplicas": 1}
        ready["metadata"]["resourceVersion"] = "900"
        c.store.put("Deployment", ready)
        c.store.put("Pod", pod("o"))
        await c.reconcile(NS, {"o"})
        assert mode()["phase"] == "Ready" and mode()["activeMode"] == "ollama"  # the end: at once

    asyncio.run(scenario())


def test_progress_only_ignores_the_message_and_the_engines_list_nothing_else() -> None:
    cond: dict[str, Any] = {"type": "Ready", "status": "False", "reason": "Switching", "message": "2 outgoing"}
    base: dict[str, Any] = {"phase": "Switching", "activeMode": "vllm", "message": "2 outgoing",
                            "engines": [{"name": "a"}], "conditions": [cond]}  # fmt: skip
    later = {**base, "message": "1 outgoing", "engines": [], "conditions": [{**cond, "message": "1 outgoing"}]}
    assert progress_only(base, later)
    assert not progress_only(base, {**base, "phase": "Ready"})
    assert not progress_only(base, {**base, "activeMode": "ollama"})
    assert not progress_only(base, {**base, "conditions": [{**cond, "status": "True"}]})

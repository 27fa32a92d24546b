"""What an engine's status may wait for while what was applied settles (settling.py), and the controller's
passes with it: fewer writes in a switch, nothing a user or a gateway acts on held back, and decisions
made from the status held rather than the one written."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime
from typing import Any

from roundhouse_api import Condition, EngineStatus, Phase, StoppingReplica
from roundhouse_operator.settling import may_wait, news, progress_only
from tests.unit.test_controller_passes import NS, controller, em, ie, pod
from tests.unit.test_scaling_passes import EventKube, report, scaled_ie

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def cond(kind: str, status: str, reason: str = "R", message: str = "m") -> Condition:
    return Condition(type=kind, status=status, reason=reason, message=message, last_transition_time=T0,
                     observed_generation=1)  # fmt: skip


def st(phase: Phase | None, *conditions: Condition, **fields: Any) -> EngineStatus:
    base: dict[str, Any] = {"phase": phase, "observed_generation": 1, "replicas": 1, "ready_replicas": 0,
                            "ready": "0/1", "desired_replicas": 1, "message": "loading", "active": True}  # fmt: skip
    return EngineStatus(**{**base, **fields}, conditions=list(conditions))


def test_an_engine_coming_up_waits_and_what_it_reaches_goes_at_once() -> None:
    assert may_wait(None, st(Phase.PENDING)) and may_wait(None, st(Phase.STARTING))  # a new engine's first
    for phase in (Phase.READY, Phase.FAILED, Phase.STANDBY, Phase.DEGRADED):
        assert not may_wait(None, st(phase)) and news(None, st(phase))
    standby = st(Phase.STANDBY, desired_replicas=0, active=False, replicas=0)
    assert may_wait(standby, st(Phase.PENDING)) and may_wait(standby, st(Phase.STARTING))  # activated
    assert may_wait(st(Phase.PENDING), st(Phase.STARTING))
    assert not may_wait(st(Phase.STARTING), st(Phase.READY))  # never holds back Ready
    assert not may_wait(st(Phase.STARTING), st(Phase.STANDBY))
    # An engine that served and now starts again (a rollout, a crash) stopped serving: said at once.
    assert not may_wait(st(Phase.READY), st(Phase.STARTING)) and not may_wait(st(Phase.DEGRADED), st(Phase.PENDING))


def test_a_new_generation_the_replicas_stopping_and_a_refusal_go_at_once() -> None:
    starting = st(Phase.STARTING, cond("Scheduled", "Unknown"))
    assert not may_wait(starting, st(Phase.STARTING, cond("Scheduled", "Unknown"), observed_generation=2))
    stopping = [StoppingReplica(pod="p-1", address="10.0.0.1", since=T0)]
    assert not may_wait(starting, st(Phase.STARTING, cond("Scheduled", "Unknown"), stopping=stopping))
    unschedulable = st(Phase.PENDING, cond("Scheduled", "False", "Unschedulable", "Insufficient nvidia.com/gpu"))
    assert not may_wait(starting, unschedulable) and not may_wait(None, unschedulable)
    assert may_wait(unschedulable, unschedulable.model_copy(update={"replicas": 2}))  # the same refusal again
    other = st(Phase.PENDING, cond("Scheduled", "False", "Unschedulable", "0/2 nodes are available"))
    assert not may_wait(unschedulable, other)  # a new reason to refuse is news
    refused = st(Phase.READY, cond("Applied", "False", "RefusedService", "spec.ports: invalid"))
    assert not may_wait(st(Phase.READY, cond("Applied", "True")), refused)


def test_counts_and_their_words_are_progress_and_nothing_else_is() -> None:
    going = st(Phase.STANDBY, cond("Scheduled", "True", "Scheduled", "1 pod(s) placed"),
               cond("Ready", "False", "Standby", "switched off; 1 pod(s) stopping"), desired_replicas=0,
               message="switched off; 1 pod(s) stopping", active=False)  # fmt: skip
    gone = st(Phase.STANDBY, cond("Scheduled", "Unknown", "NoPods", "no pods to place"),
              cond("Ready", "False", "Standby", "switched off"), desired_replicas=0, message="switched off",
              active=False, replicas=0, ready="0/0")  # fmt: skip
    assert progress_only(going, gone) and may_wait(going, gone)
    assert not progress_only(going, gone.model_copy(update={"desired_replicas": 1}))
    assert not progress_only(going, gone.model_copy(update={"active": True}))
    assert not progress_only(going, gone.model_copy(update={"phase": Phase.READY}))
    assert not progress_only(going, gone.model_copy(update={"endpoint": "http://x"}))
    failed_pod = gone.model_copy(update={"conditions": [cond("Scheduled", "False", "Unschedulable", "no")]})
    assert not progress_only(going, failed_pod)


def mode_patch(c: Any, spec_mode: str) -> None:
    mode = copy.deepcopy(c.store.get("EngineMode", NS, "default"))
    mode["spec"]["mode"], mode["metadata"]["generation"] = spec_mode, 2
    mode["metadata"]["resourceVersion"] = str(next(c.kube.rv))
    c.store.put("EngineMode", mode)


def deployment_ready(c: Any, name: str, ready: int) -> None:
    """The Deployment's status as the controller-manager writes it (a newer version than the operator's)."""
    d = copy.deepcopy(c.store.get("Deployment", NS, name))
    d["status"] = {"replicas": ready, "readyReplicas": ready}
    d["metadata"]["resourceVersion"] = str(next(c.kube.rv))
    c.store.put("Deployment", d)


def test_a_switch_writes_each_engine_what_it_reaches_and_its_counts_once_it_settles() -> None:
    """vllm -> ollama: the outgoing engine says Standby at once and its pod gone once it settles; the
    incoming one's first write says Ready. Before, each step was a write: five for the two engines."""
    c, kube = controller(("EngineMode", em("vllm")), ("InferenceEngine", ie("v", "vllm")),
                         ("InferenceEngine", ie("o", "ollama")))  # fmt: skip

    def phase(name: str) -> str:
        return c.store.get("InferenceEngine", NS, name)["status"]["phase"]  # type: ignore[index,no-any-return]

    async def scenario() -> None:
        await c.reconcile(NS)
        c.store.put("Pod", pod("v"))
        deployment_ready(c, "v", 1)
        await c.reconcile(NS)
        assert (phase("v"), phase("o")) == ("Ready", "Standby")
        c.settle_seconds = 30.0
        kube.status_patched.clear()

        mode_patch(c, "ollama")
        await c.reconcile(NS)
        assert kube.status_patched == ["InferenceEngine/v", "EngineMode/default"]  # o waits for v's pod: held
        assert phase("v") == "Standby" and c.phases[(NS, "o")] == "Pending"  # the gauges and the mode do not wait
        c.store.remove("Pod", pod("v"))
        deployment_ready(c, "v", 0)
        await c.reconcile(NS, {"v"})  # v's pod is gone (a count: held), o's plan changes: it starts (held)
        assert c.store.get("Deployment", NS, "o")["spec"]["replicas"] == 1  # type: ignore[index]
        assert [w for w in kube.status_patched if w.startswith("InferenceEngine")] == ["InferenceEngine/v"]
        c.store.put("Pod", pod("o"))
        deployment_ready(c, "o", 1)
        await c.reconcile(NS, {"o"})
        assert kube.status_patched.count("InferenceEngine/o") == 1 and phase("o") == "Ready"  # at once
        assert c.store.get("EngineMode", NS, "default")["status"]["phase"] == "Ready"  # type: ignore[index]

        for key in list(c._settle):  # the settling time is over
            c._settle[key] = 0.0
            c._settled(key)
        assert c.dirty == {NS: {"v"}}  # only v has a status held
        await c.reconcile(NS, {"v"})
        assert kube.status_patched.count("InferenceEngine/v") == 2
        assert c.store.get("InferenceEngine", NS, "v")["status"]["replicas"] == 0  # type: ignore[index]
        assert c._held == {}

    asyncio.run(scenario())


def test_scaling_decisions_read_the_status_held_not_the_one_written() -> None:
    """An engine starting with three replicas, its status held, asked for five: the event says 3→5 (from
    the API server's status, which says nothing yet, a user would never hear of it)."""
    mode = em("llamacpp")
    report(mode, "gw-1", a=12)
    c, _ = controller(("EngineMode", mode), ("InferenceEngine", scaled_ie("a")))
    kube = EventKube()
    kube.store = c.store  # type: ignore[attr-defined]
    c.kube = kube  # type: ignore[assignment]
    c.settle_seconds = 30.0

    async def scenario() -> None:
        await c.reconcile(NS)
        assert c.store.get("Deployment", NS, "a")["spec"]["replicas"] == 3  # type: ignore[index]
        assert kube.status_patched == ["EngineMode/default"] and c._held[(NS, "a")].desired_replicas == 3
        more = copy.deepcopy(c.store.get("EngineMode", NS, "default"))
        report(more, "gw-2", a=8)  # 20 in all
        more["metadata"]["resourceVersion"] = "999"
        c.store.put("EngineMode", more)
        await c.reconcile(NS)
        assert c.store.get("Deployment", NS, "a")["spec"]["replicas"] == 5  # type: ignore[index]
        assert ("a", "ScaledUp", "3→5: 6.67 requests running and waiting per replica, target 4") in kube.events

    asyncio.run(scenario())

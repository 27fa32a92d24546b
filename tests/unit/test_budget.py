"""The admin page's Budget view: its history, its JSON, and how a cluster's EngineMode becomes it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from roundhouse_api import Mode, OnDemandPolicy
from roundhouse_api.demand import GatewayReport, report_key
from roundhouse_gateway.routing.demand import Demand
from roundhouse_gateway.sources import cluster_budget
from roundhouse_gateway.sources.budget import BudgetState, History, Holder, Swap, view
from roundhouse_gateway.sources.cluster import KEPT_ON_DEMAND, switch_patch

T0 = 1_800_000_000.0


def test_history_keeps_one_point_per_change_for_an_hour_and_what_was_held_when_it_opens() -> None:
    h = History(keep=3600)
    h.record(T0, {"a": 1})
    h.record(T0 + 1, {"a": 1, "b": 0})  # the same holders (zeros are nobody): no new point
    h.record(T0 + 10, {"b": 2})
    h.record(T0 + 20, {})
    assert [p[1] for p in h.points] == [{"a": 1}, {"b": 2}, {}]
    h.record(T0 + 4000, {"a": 1})  # the first two are out of the window; {} still says what was held at its start
    assert [p[1] for p in h.points] == [{}, {"a": 1}]
    series = h.series(T0 + 4000)
    assert series[0]["at"].startswith("2027-01-15T08:06:40") and series[1]["held"] == {"a": 1}


def test_holders_count_what_they_hold_and_swaps_say_how_long_they_took() -> None:
    assert Holder("a", "vllm", 2, "running").held == 2
    assert [Holder("a", "vllm", 2, s).held for s in ("starting", "draining", "stopping")] == [2, 2, 2]
    assert [Holder("a", "vllm", 2, s).held for s in ("standby", "waiting", "failed")] == [0, 0, 0]
    assert Swap(T0, "a", "Activated", "a is ready 1.3s after it was started").seconds == 1.3
    assert Swap(T0, "a", "Stopped", "scaled a to zero after draining 0.2s: nothing left").seconds == 0.2
    assert Swap(T0, "a", "Activating", "a request waits for a: starting it").seconds is None


def test_the_view_sorts_swaps_newest_first_and_ties_by_the_order_they_happened() -> None:
    state = BudgetState(
        gpus=2,
        engines=(Holder("b", "llamacpp", 1, "waiting", waiting=3, oldest_wait_at=T0 - 4.04),
                 Holder("a", "vllm", 2, "draining", in_flight=1, since=T0 - 1.5, message="draining: making room")),
        swaps=(Swap(T0 - 5, "a", "Activating", "x", seq=1), Swap(T0 - 1, "a", "Draining", "y", seq=2),
               Swap(T0 - 1, "b", "Waiting", "z", seq=3)),
        policy=OnDemandPolicy(gpu_budget=2, drain_seconds=5),
    )  # fmt: skip
    out = view(state, History(), T0)
    assert out["onDemand"] is True and out["gpuBudget"] == 2 and out["gpusHeld"] == 2
    assert out["settings"]["drainSeconds"] == 5 and out["settings"]["gpuBudget"] == 2
    assert [e["name"] for e in out["engines"]] == ["a", "b"]
    a, b = out["engines"]
    assert (a["state"], a["gpusHeld"], a["inFlight"], a["stateSeconds"]) == ("draining", 2, 1, 1.5)
    assert (b["gpusHeld"], b["waiting"], b["oldestWaitSeconds"], b["stateSeconds"]) == (0, 3, 4.0, None)
    assert [s["reason"] for s in out["swaps"]] == ["Waiting", "Draining", "Activating"]
    assert view(None, History(), T0) == {"onDemand": False}


def raw_mode(engines: list[dict[str, Any]], annotations: dict[str, str] | None = None,
             active: str = "onDemand") -> dict[str, Any]:  # fmt: skip
    return {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "EngineMode",
            "metadata": {"name": "default", "namespace": "ns", "annotations": annotations or {}},
            "spec": {"mode": "onDemand", "onDemand": {"gpuBudget": 4, "drainSeconds": 3}},
            "status": {"activeMode": active, "gpuBudget": 4, "gpusHeld": 2, "engines": engines}}  # fmt: skip


def raw_engine(name: str, gpus: int, replicas: int = 1) -> dict[str, Any]:
    return {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine", "metadata": {"name": name},
            "spec": {"engine": "llamacpp", "model": {"source": "/m.gguf", "servedName": name}, "gpus": gpus,
                     "replicas": replicas}}  # fmt: skip


ENGINES = {"a": raw_engine("a", 1, replicas=2), "b": raw_engine("b", 2), "broken": {"spec": {"engine": 7}}}


def test_a_cluster_s_holders_come_from_the_status_and_every_gateway_s_requests() -> None:
    own = Demand()
    own.in_flight["a"] += 2
    own.waiting["b"] = [T0 - 3, T0 - 1]
    mine, other = report_key("me"), report_key("other")
    annotations = {
        mine: GatewayReport(at=T0, inFlight={"a": 9}).wire(),  # our own, stale: the live counts win
        other: GatewayReport(at=T0 - 1, inFlight={"a": 1}, waiting={"b": T0 - 7}).wire(),
        report_key("gone"): GatewayReport(at=T0 - 999, inFlight={"a": 5}).wire(),  # too old to count
    }
    engines = [{"name": "a", "family": "llamacpp", "active": True, "state": "active", "message": "serving",
                "activatedAt": "2027-01-15T07:59:50Z"},
               {"name": "b", "family": "llamacpp", "active": False, "state": "waiting", "message": "waiting for GPUs"},
               {"name": "ext", "family": "external", "active": True}]  # fmt: skip
    mode = raw_mode(engines, annotations)
    held = cluster_budget.holders(mode, cluster_budget.engine_gpus(ENGINES, ["a", "b"]), own, mine, T0)
    a, b = held
    assert (a.state, a.gpus, a.held, a.in_flight, a.waiting, a.since) == ("running", 2, 2, 3, 0, T0 - 10)
    assert (b.state, b.held, b.waiting, b.oldest_wait_at, b.message) == ("waiting", 0, 3, T0 - 7, "waiting for GPUs")
    assert cluster_budget.held(mode, ENGINES) == {"a": 2}
    assert cluster_budget.held(raw_mode(engines, active="vllm"), ENGINES) == {}
    state = cluster_budget.state(mode, ENGINES, own, mine, [], T0)
    assert state is not None and state.gpus == 4 and state.policy.drain_seconds == 3
    assert cluster_budget.state(raw_mode(engines, active="vllm"), ENGINES, own, mine, [], T0) is None
    assert cluster_budget.state(None, ENGINES, own, mine, [], T0) is None


@pytest.mark.parametrize(("message", "engine"), [
    ("a request waits for big-one: starting it (2 of 4 GPUs; demanded 0.1s ago)", "big-one"),
    ("draining small (making room for big-one): no new requests, 0 in flight may finish", "small"),
    ("scaled small to zero after draining 0.3s: nothing left in flight", "small"),
    ("big-one is ready 1.2s after it was started: demand to scale-up 0.06s", "big-one"),
    ("big-one: waiting for small to stop (GPUs to free up)", "big-one"),
])  # fmt: skip
def test_each_on_demand_event_is_named_by_its_engine(message: str, engine: str) -> None:
    reason = {"a": "Activating", "d": "Draining", "s": "Stopped"}.get(message[0], "Activated")
    ev = {"reason": reason, "message": message, "lastTimestamp": "2027-01-15T08:00:00Z",
          "metadata": {"resourceVersion": "42"}}  # fmt: skip
    (swap,) = cluster_budget.swaps([ev, {"reason": "Switched", "message": "not a swap"}])
    assert (swap.engine, swap.at, swap.seq) == (engine, T0, 42)


def test_switching_out_of_on_demand_keeps_its_settings_for_the_way_back() -> None:
    raw = raw_mode([])
    out = switch_patch(raw, Mode.LLAMACPP)
    assert out["spec"] == {"mode": "llamacpp", "onDemand": None}  # the CRD refuses onDemand in other modes
    kept = out["metadata"]["annotations"][KEPT_ON_DEMAND]
    assert json.loads(kept) == {"gpuBudget": 4, "drainSeconds": 3}
    manual = {"metadata": {"annotations": {KEPT_ON_DEMAND: kept}}, "spec": {"mode": "llamacpp"}}
    restored = {"spec": {"mode": "onDemand", "onDemand": {"gpuBudget": 4, "drainSeconds": 3}}}
    assert switch_patch(manual, Mode.ON_DEMAND) == restored
    assert switch_patch(manual, Mode.VLLM) == {"spec": {"mode": "vllm"}}
    garbled = {"metadata": {"annotations": {KEPT_ON_DEMAND: "{not json"}}, "spec": {"mode": "vllm"}}
    assert switch_patch(garbled, Mode.ON_DEMAND) == {"spec": {"mode": "onDemand"}}

"""plan_on_demand() with autoscaled engines: the GPU budget shared replica by replica, over tables."""

from __future__ import annotations

import pytest

from roundhouse_api.ondemand import Budget, DemandView, plan_on_demand

T = 1_000_000.0
B2 = Budget(gpus=2, min_active=60, idle=0, drain=30)
B4 = Budget(gpus=4, min_active=60, idle=0, drain=30)


def scaled(name: str, replicas: int = 1, want: int = 1, load: int = 0, unit: int = 1, pods: int | None = None,
           activated: float = T - 600, **kw: object) -> DemandView:  # fmt: skip
    """A running autoscaled engine: `replicas` deployed, the autoscaler wanting `want`."""
    return DemandView(name=name, gpus=unit, spec_replicas=1, deployed=replicas,
                      pods=replicas if pods is None else pods, ready=True, activated_at=activated,
                      last_request_at=T - 1, unit=unit, want=want, load=load, **kw)  # type: ignore[arg-type]  # fmt: skip


def standby(name: str, demanded: float | None = None, unit: int = 1, want: int = 1) -> DemandView:
    return DemandView(name=name, gpus=unit, spec_replicas=1, deployed=0, pods=0, demanded_at=demanded, unit=unit,
                      want=want)  # fmt: skip


CASES: dict[str, tuple[list[DemandView], Budget, dict[str, tuple[int, str]], list[tuple[str, str]]]] = {
    "a burst scales 1 -> 3 within the budget": (
        [scaled("a", want=3, load=12)], B4, {"a": (3, "active")}, []),
    "the budget caps it": (
        [scaled("a", want=5, load=20)], B4, {"a": (4, "active")}, []),
    "it scales back down when the load goes": (
        [scaled("a", replicas=3, want=1)], B4, {"a": (1, "active")}, []),
    "GPUs of stopping replicas stay counted": (
        [scaled("a", replicas=1, pods=3, want=1), scaled("b", want=3, load=12)], B4,
        {"a": (1, "active"), "b": (1, "active")}, []),
    "free GPUs go to the longest queue per replica first": (
        [scaled("a", want=4, load=6), scaled("b", want=4, load=16)], B4,
        {"a": (1, "active"), "b": (3, "active")}, []),
    "equal queues share evenly": (
        [scaled("a", want=4, load=8), scaled("b", want=4, load=8)], B4, {"a": (2, "active"), "b": (2, "active")}, []),
    "what an engine holds is kept while it wants it": (
        [scaled("a", replicas=3, want=3, load=3), scaled("b", want=3, load=30)], B4,
        {"a": (3, "active"), "b": (1, "active")}, []),
    "two models contending for a budget of 2: each gets its first replica": (
        [scaled("a", replicas=2, want=2, load=10), standby("b", demanded=T - 1)], B2,
        {"a": (1, "active"), "b": (0, "waiting")}, [("a", "ScalingDown")]),
    "the extra replica given back is stopping: nothing more is taken, no new event": (
        [scaled("a", replicas=1, pods=2, want=2, load=10), standby("b", demanded=T - 1)], B2,
        {"a": (1, "active"), "b": (0, "waiting")}, []),
    "the waiting model starts once that pod is gone": (
        [scaled("a", replicas=1, want=2, load=10), standby("b", demanded=T - 1)], B2,
        {"a": (1, "active"), "b": (1, "starting")}, [("b", "Activating")]),
    "no extra replica while a model waits for its first": (
        [scaled("a", replicas=1, want=3, load=20, activated=T - 5), standby("b", demanded=T - 1, unit=2)], B2,
        {"a": (1, "active"), "b": (0, "waiting")}, []),
    "with room, the waiting model starts and the other grows into what is left": (
        [scaled("a", want=3, load=20), standby("b", demanded=T - 1)], B4,
        {"a": (3, "active"), "b": (1, "starting")}, [("b", "Activating")]),
    "extra replicas are not enough: the engine is evicted whole (drained)": (
        [scaled("a", replicas=2, want=2, unit=1), standby("big", demanded=T - 1, unit=4)], B4,
        {"a": (2, "draining"), "big": (0, "waiting")}, [("a", "Draining")]),
    "minActiveSeconds still protects a whole engine": (
        [scaled("a", replicas=1, want=1, unit=2, activated=T - 5), standby("b", demanded=T - 1, unit=2)], B2,
        {"a": (1, "active"), "b": (0, "waiting")}, []),
    "a budget lowered below the replicas takes extra ones back first": (
        [scaled("a", replicas=4, want=4, load=16)], B2, {"a": (2, "active")}, [("a", "ScalingDown")]),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_sharing(case: str) -> None:
    engines, budget, want_states, want_events = CASES[case]
    p = plan_on_demand(engines, budget, T)
    assert {n: (d.replicas, d.state) for n, d in p.engines.items()} == want_states, [d.note for d in p.engines.values()]
    assert [(e.engine, e.reason) for e in p.events] == want_events


def test_notes_say_what_it_got_of_what_it_wants() -> None:
    p = plan_on_demand([scaled("a", want=5, load=20)], B4, T)
    assert p.engines["a"].note == "4 of 5 replicas: waiting for GPUs (budget 4)"
    assert p.gpus_held == 1
    p = plan_on_demand([scaled("a", replicas=2, want=2, load=10), standby("b", demanded=T - 1)], B2, T)
    assert p.engines["a"].note == "1 of 2 replicas: extra ones given back for the GPU budget"
    assert "b waits for its first replica" in p.events[0].message

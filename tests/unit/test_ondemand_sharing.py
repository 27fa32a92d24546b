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
    # `need`: what the load asks for now; replicas beyond it are kept only by the scale-down window.
    "replicas kept only by the scale-down window give way to a queue that needs them": (
        [scaled("a", replicas=3, want=3, need=1, load=2), scaled("b", want=3, need=3, load=24)], B4,
        {"a": (1, "active"), "b": (1, "active")}, [("a", "ScalingDown")]),
    "the fewest requests per replica give first, and only as many as the queue needs": (
        [scaled("a", replicas=2, want=2, need=1, load=4), scaled("c", replicas=2, want=2, need=1, load=1),
         scaled("b", want=2, need=2, load=12)], Budget(gpus=5, min_active=60, idle=0, drain=30),
        {"a": (2, "active"), "c": (1, "active"), "b": (1, "active")}, [("c", "ScalingDown")]),
    "while their pods stop, nothing more is taken and the window does not grow them back": (
        [scaled("a", replicas=1, pods=3, want=3, need=1, load=2), scaled("b", want=3, need=3, load=24)], B4,
        {"a": (1, "active"), "b": (1, "active")}, []),
    "once the pods are gone, the queue grows into their GPUs": (
        [scaled("a", replicas=1, want=3, need=1, load=2), scaled("b", want=3, need=3, load=24)], B4,
        {"a": (1, "active"), "b": (3, "active")}, []),
    "a window-kept replica stays when no engine needs more": (
        [scaled("a", replicas=3, want=3, need=1, load=2), scaled("b", want=1, need=1, load=3)], B4,
        {"a": (3, "active"), "b": (1, "active")}, []),
    "replicas the load still needs are not taken": (
        [scaled("a", replicas=3, want=3, need=3, load=20), scaled("b", want=3, need=3, load=30)], B4,
        {"a": (3, "active"), "b": (1, "active")}, []),
    "the autoscaler's want is not yet the queue's: nothing is taken for what the window has not confirmed": (
        [scaled("a", replicas=3, want=3, need=1, load=2), scaled("b", want=1, need=3, load=24)], B4,
        {"a": (3, "active"), "b": (1, "active")}, []),
    "a replica the load no longer needs is not started again into free GPUs": (
        [scaled("a", replicas=1, want=3, need=1, load=2)], B4, {"a": (1, "active")}, []),
    "never below the engine's first replicas": (
        [scaled("a", replicas=1, want=1, need=1, load=0), scaled("b", want=4, need=4, load=40)], B4,
        {"a": (1, "active"), "b": (3, "active")}, []),
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


def test_a_replica_given_way_says_to_whom_and_why() -> None:
    p = plan_on_demand([scaled("a", replicas=3, want=3, need=1, load=2), scaled("b", want=3, need=3, load=24)], B4, T)
    assert p.engines["a"].note == ("1 of 3 replicas: the load needs 1 now; the rest given back to b, whose load"
                                   " needs more (GPU budget 4)")  # fmt: skip
    assert p.engines["b"].note == "1 of 3 replicas: waiting for GPUs (budget 4)"
    assert [e.message for e in p.events] == ["a gives replicas back to 1: its load needs fewer now, and b's needs"
                                             " more within the GPU budget"]  # fmt: skip

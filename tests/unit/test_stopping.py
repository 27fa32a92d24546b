"""A scale-down that drains first (operator/stopping.py): which pods it stops, when the Deployment goes
down, and what it calls off. Pure: pods, reports and the clock as plain data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from roundhouse_api import EngineMode, StoppingReplica
from roundhouse_api.demand import GatewayReport
from roundhouse_operator.stopping import DELETION_COST, STOP_FIRST, drain_seconds, step

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def pod(name: str, created: int, ready: bool = True, marked: bool = False, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "creationTimestamp": f"2026-12-07T11:{created:02d}:00Z"}
    if marked:
        meta["annotations"] = {DELETION_COST: STOP_FIRST}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-07T12:00:00Z"
    return {"metadata": meta, "status": {"podIP": f"10.0.0.{created}",
                                         "conditions": [{"type": "Ready", "status": str(ready)}]}}  # fmt: skip


def stopping(*names: str, since: datetime = T0) -> list[StoppingReplica]:
    return [StoppingReplica(pod=n, since=since) for n in names]


def at(seconds: float, **stopping_in_flight: int) -> GatewayReport:
    return GatewayReport(at=(T0 + timedelta(seconds=seconds)).timestamp(), stopping=stopping_in_flight)


def test_a_scale_down_first_stops_routing_to_the_newest_ready_pods_and_keeps_the_deployment() -> None:
    pods = [pod("old", 1), pod("mid", 2), pod("new", 3)]
    s = step("e", 1, 3, pods, [], [at(-5)], T0, 30)
    assert s.replicas == 3 and [r.pod for r in s.stopping] == ["new", "mid"]
    assert [r.address for r in s.stopping] == ["10.0.0.3", "10.0.0.2"] and s.mark == ["new", "mid"]
    assert s.wake_in == 30


def test_a_pod_not_ready_is_stopped_before_a_ready_one() -> None:
    s = step("e", 2, 3, [pod("old", 1, ready=False), pod("mid", 2), pod("new", 3)], [], [], T0, 30)
    assert [r.pod for r in s.stopping] == ["old"]


@pytest.mark.parametrize(
    ("reports", "later", "down"),
    [
        ([at(0.5)], 1, True),  # every gateway wrote since, nothing in flight there
        ([at(0.5, e=1)], 1, False),  # a request still runs on it
        ([at(0.5, other=3)], 1, True),  # another engine's stopping replicas are not this one's
        ([at(0.5), at(-1)], 1, False),  # one gateway has not written since: it may still route there
        ([], 1, False),  # no gateway reports: the deadline decides
        ([], 30, True),  # the deadline
        ([at(0.5, e=2)], 30, True),  # the deadline, whatever still runs
    ],
)
def test_the_deployment_goes_down_once_the_gateways_say_drained_or_at_the_deadline(
    reports: list[GatewayReport], later: float, down: bool
) -> None:
    pods = [pod("a", 1), pod("b", 2, marked=True)]
    s = step("e", 1, 2, pods, stopping("b"), reports, T0 + timedelta(seconds=later), 30)
    assert s.replicas == (1 if down else 2) and [r.pod for r in s.stopping] == ["b"] and s.mark == []
    assert s.wake_in == (None if down else 30 - later)


def test_not_down_before_the_pods_carry_the_mark_that_makes_the_replica_set_choose_them() -> None:
    s = step("e", 1, 2, [pod("a", 1), pod("b", 2)], stopping("b"), [at(1)], T0 + timedelta(seconds=2), 30)
    assert s.replicas == 2 and s.mark == ["b"]
    # A mark the API server refuses (no permission) holds the scale-down until the deadline, not for ever.
    late = step("e", 1, 2, [pod("a", 1), pod("b", 2)], stopping("b"), [at(1)], T0 + timedelta(seconds=30), 30)
    assert late.replicas == 1 and late.mark == ["b"]


def test_once_down_the_stopped_pods_stay_out_of_routing_until_the_replica_set_deletes_them() -> None:
    pods = [pod("a", 1), pod("b", 2, marked=True)]
    s = step("e", 1, 1, pods, stopping("b"), [], T0, 30)
    assert s.replicas == 1 and [r.pod for r in s.stopping] == ["b"] and s.unmark == []
    gone = step("e", 1, 1, [pod("a", 1), pod("b", 2, marked=True, deleting=True)], stopping("b"), [], T0, 30)
    assert gone.replicas == 1 and gone.stopping == [] and gone.unmark == []


def test_load_coming_back_calls_the_scale_down_off_and_unmarks_its_pods() -> None:
    pods = [pod("a", 1), pod("b", 2, marked=True)]
    s = step("e", 2, 2, pods, stopping("b"), [], T0, 30)
    assert s.replicas == 2 and s.stopping == [] and s.unmark == ["b"]


def test_a_deeper_scale_down_keeps_the_pods_already_stopping_and_adds_the_next() -> None:
    pods = [pod("a", 1), pod("b", 2, marked=True), pod("c", 3, marked=True)]
    s = step("e", 1, 3, pods, stopping("c", since=T0 - timedelta(seconds=20)), [], T0, 30)
    assert [r.pod for r in s.stopping] == ["c", "b"] and s.stopping[0].since == T0 - timedelta(seconds=20)
    assert s.replicas == 3 and s.wake_in == 30  # the newest stop's drain decides
    shallower = step("e", 2, 3, pods, stopping("c", "b"), [], T0, 30)
    assert [r.pod for r in shallower.stopping] == ["c"] and shallower.unmark == ["b"]


def test_a_stop_to_zero_is_the_on_demand_plan_s_and_a_gone_pod_is_replaced() -> None:
    assert step("e", 0, 2, [pod("a", 1), pod("b", 2)], [], [], T0, 30).stopping == []
    s = step("e", 1, 2, [pod("a", 1), pod("c", 3)], stopping("b"), [], T0, 30)
    assert [r.pod for r in s.stopping] == ["c"] and s.stopping[0].since == T0


def test_the_drain_is_the_mode_s() -> None:
    def mode(spec: dict[str, Any]) -> EngineMode:
        return EngineMode.model_validate({"metadata": {"name": "default"}, "spec": spec})

    assert drain_seconds(None) == 30
    assert drain_seconds(mode({"mode": "onDemand", "onDemand": {"drainSeconds": 5}})) == 5
    assert drain_seconds(mode({"mode": "llamacpp", "switchPolicy": {"drainSeconds": 7}})) == 7


def test_a_pod_already_marked_stays_the_one_stopping_when_the_status_listing_it_is_not_there() -> None:
    """The status write of the pass that chose it may not be back yet: the mark on the pod decides, so the
    pod the gateways stop routing to is always the one the ReplicaSet will delete."""
    pods = [pod("a", 1), pod("b", 2), pod("c", 1, marked=True)]
    s = step("e", 2, 3, pods, [], [], T0, 30)
    assert [r.pod for r in s.stopping] == ["c"] and s.mark == [] and s.unmark == []
    fewer = step("e", 2, 3, [pod("a", 1), pod("b", 2, marked=True), pod("c", 3, marked=True)], [], [], T0, 30)
    assert [r.pod for r in fewer.stopping] == ["c"] and fewer.unmark == ["b"]

"""The autoscaler over tables of readings and clocks: bursts, noise, a dead gateway, stabilization, min/max."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from roundhouse_api import Autoscaling
from roundhouse_api.autoscaler import Reading, autoscale, load_at, next_step, readings, recommend
from roundhouse_api.demand import GatewayReport

POLICY = Autoscaling(minReplicas=1, maxReplicas=5, targetRequestsPerReplica=4, scaleUpSeconds=20,
                     scaleDownSeconds=60)  # fmt: skip


def every(source: str, start: float, stop: float, load: int, step: float = 10, waiting: int = 0) -> list[Reading]:
    """A gateway reporting `load` in flight (and `waiting` held) every `step` seconds in [start, stop]."""
    out, t = [], start
    while t <= stop:
        out.append(Reading(source, t, load, waiting))
        t += step
    return out


@dataclass(frozen=True)
class Case:
    id: str
    series: list[Reading]
    now: float
    current: int = 1
    replicas: int = 1
    direction: str = ""
    policy: Autoscaling = field(default_factory=lambda: POLICY)
    since: float = 0


CASES = [
    Case("no readings: stays", [], 100),
    Case(
        "a burst that lasts the up window: 14 waiting -> 4",
        every("g", 70, 100, 2, waiting=12),
        100,
        replicas=4,
        direction="up",
    ),
    Case("a burst shorter than the up window: not yet", [*every("g", 0, 80, 0), *every("g", 90, 100, 14)], 100),
    Case(
        "burst over two gateways adds up",
        [*every("a", 70, 100, 6), *every("b", 75, 100, 6)],
        100,
        replicas=3,
        direction="up",
    ),
    Case(
        "noise: one spike among quiet readings",
        [*every("g", 0, 60, 2), Reading("g", 70, 20), *every("g", 80, 100, 2)],
        100,
    ),
    Case("max: capped", every("g", 0, 100, 100), 100, replicas=5, direction="up"),
    Case(
        "scale-down waits for the down window",
        [*every("g", 0, 70, 12), *every("g", 80, 100, 1)],
        100,
        current=3,
        replicas=3,
    ),
    Case(
        "scale-down after a quiet down window",
        [*every("g", 0, 30, 12), *every("g", 40, 100, 1)],
        100,
        current=3,
        replicas=1,
        direction="down",
    ),
    Case(
        "scale-down only as far as the window's peak",
        [*every("g", 0, 30, 20), *every("g", 40, 60, 7), *every("g", 70, 110, 1)],
        110,
        current=5,
        replicas=2,
        direction="down",
    ),
    Case(
        "a dead gateway's stale report stops counting",
        [*every("dead", 0, 20, 40), *every("g", 0, 200, 2)],
        200,
        current=5,
        replicas=1,
        direction="down",
    ),
    Case(
        "a dead gateway's last report counts until it is stale",
        [*every("dead", 0, 90, 40), *every("g", 0, 100, 2)],
        100,
        current=5,
        replicas=5,
    ),
    Case(
        "below minReplicas: raised at once",
        [],
        100,
        current=0,
        policy=Autoscaling(minReplicas=2, maxReplicas=4),
        replicas=2,
        direction="up",
    ),
    Case("above maxReplicas (lowered in the spec): at once", [], 100, current=8, replicas=5, direction="down"),
    Case(
        "minReplicas 0 still runs one here (zero is the on-demand plan's)",
        [],
        100,
        policy=Autoscaling(minReplicas=0, maxReplicas=3),
        current=1,
        replicas=1,
    ),
    Case("just started: the up window is not watched yet", every("g", 0, 100, 40), 100, since=95),
    Case(
        "just started: the down window is not watched yet", every("g", 0, 100, 0), 100, since=60, current=4, replicas=4
    ),
    Case(
        "no windows: follows the load now",
        [*every("g", 0, 90, 0), Reading("g", 100, 9)],
        100,
        policy=Autoscaling(maxReplicas=5, targetRequestsPerReplica=4, scaleUpSeconds=0, scaleDownSeconds=0),
        replicas=3,
        direction="up",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_autoscale(case: Case) -> None:
    got = autoscale(case.policy, case.current, case.series, case.now, case.since)
    assert (got.replicas, got.direction) == (case.replicas, case.direction), got.reason


def test_the_reason_says_load_per_replica_and_target() -> None:
    got = autoscale(POLICY, 1, every("g", 70, 100, 2, waiting=12), 100, 0)
    assert got.reason == "14 requests running and waiting per replica, target 4 (for 20s)"


def test_wakes_when_a_window_moves_on() -> None:
    # A short burst: the answer changes once the quiet reading before it leaves the up window.
    got = autoscale(POLICY, 1, [*every("g", 0, 80, 0), *every("g", 90, 100, 14)], 100, 0)
    assert got.wake_in is not None and 0 < got.wake_in <= 10
    assert "scales up once it lasts 20s" in got.reason


def test_load_is_each_sources_latest_fresh_reading() -> None:
    series = [Reading("a", 0, 5), Reading("a", 10, 1), Reading("b", 5, 3, 2)]
    assert load_at(series, 10) == 6
    assert load_at(series, 36) == 1  # b is older than 30 s
    assert load_at(series, 41) == 0


def test_readings_from_reports_count_a_report_without_the_engine_as_zero() -> None:
    reports = [("g1", GatewayReport(at=1, inFlight={"a": 3}, queued={"a": 2}, waiting={"a": 0.5})),
               ("g2", GatewayReport(at=2, inFlight={"b": 1})),
               ("old", GatewayReport(at=3, waiting={"a": 1.0}))]  # fmt: skip
    assert readings(reports, "a") == [Reading("g1", 1, 3, 2), Reading("g2", 2, 0, 0), Reading("old", 3, 0, 1)]


@pytest.mark.parametrize(
    ("latest", "load"),
    [
        ([Reading("a", 100, 3, 2)], 5),  # no engine count: the gateways' own
        ([Reading("a", 100, 3, 2, engine=3.0)], 5),  # the engine holds just the gateway's: not counted twice
        ([Reading("a", 100, 3, 2, engine=11.0)], 13),  # 8 more sent around the gateway, plus the 2 held waiting
        ([Reading("a", 100, 3, 0, engine=9.0), Reading("b", 100, 4, 0, engine=8.0)], 9),  # one count, scraped twice
        ([Reading("a", 100, 3, 0, engine=1.0), Reading("b", 100, 4, 0)], 7),  # lower than the gateways' sum
        ([Reading("a", 50, 0, 0, engine=40.0), Reading("b", 100, 1, 0, engine=2.0)], 2),  # a's is stale (REPORT_TTL)
        ([Reading("a", 100, 0, 0, engine=6.5)], 7),  # a fraction read from the text: rounded up
    ],
)
def test_the_engines_own_count_adds_what_was_sent_around_the_gateways(latest: list[Reading], load: int) -> None:
    assert load_at(latest, 100) == load


def test_requests_sent_straight_to_the_engine_scale_it_up() -> None:
    """Nothing through the gateway, 14 requests the engine itself reports for the up window: 4 replicas."""
    series = [Reading("g", t, 0, 0, engine=14.0) for t in range(70, 101, 10)]
    scale = autoscale(POLICY, 1, series, 100, 0)
    assert (scale.replicas, scale.direction, scale.load) == (4, "up", 14)
    report = GatewayReport(at=100, engineLoad={"e": 14.0}, inFlight={"e": 1})
    assert readings([("g", report)], "e") == [Reading("g", 100, 1, 0, 14.0)]


@pytest.mark.parametrize(
    ("series", "now", "current", "replicas", "need"),
    [
        ([*every("g", 0, 80, 16), *every("g", 90, 100, 2)], 100, 4, 4, 1),  # the down window keeps 4; the load asks 1
        ([*every("g", 0, 80, 0), *every("g", 90, 100, 14)], 100, 1, 1, 4),  # the up window has not confirmed 4
        (every("g", 70, 100, 9), 100, 3, 3, 3),  # steady: the same
        (every("g", 70, 100, 40), 100, 9, 5, 5),  # above maxReplicas: within the bounds
    ],
)
def test_need_is_what_the_load_asks_now_before_the_windows(
    series: list[Reading], now: float, current: int, replicas: int, need: int
) -> None:
    s = autoscale(POLICY, current, series, now, 0)
    assert (s.replicas, s.need) == (replicas, need)


STEPS = [(0, 4, 5), (3, 4, 5), (4, 4, 5), (5, 4, 9), (9, 8, 17), (16, 8, 17)]


@pytest.mark.parametrize(("load", "target", "at"), STEPS)
def test_next_step_is_where_the_load_asks_for_another_replica(load: int, target: int, at: int) -> None:
    assert next_step(load, target) == at
    policy = Autoscaling(minReplicas=1, maxReplicas=100, targetRequestsPerReplica=target)
    assert recommend(policy, at) == recommend(policy, max(load, 1)) + 1 == recommend(policy, at - 1) + 1

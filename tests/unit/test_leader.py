"""Leader election on a Lease, against a fake coordination API with the API server's resourceVersion
semantics: one leader, takeover only after the lease goes unrenewed, no double win on a race, and a
leader that cannot renew steps down before anyone may take over."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from roundhouse_operator import leader
from roundhouse_operator.leader import Elector


class FakeLeases:
    def __init__(self) -> None:
        self.lease: Any = None
        self.version = 0
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise ConnectionRefusedError("the API server is away")

    def read_namespaced_lease(self, name: str, ns: str) -> Any:
        self._check()
        if self.lease is None:
            raise ApiException(status=404)
        return copy.deepcopy(self.lease)

    def create_namespaced_lease(self, ns: str, body: Any) -> Any:
        self._check()
        if self.lease is not None:
            raise ApiException(status=409)
        self.version += 1
        body.metadata.resource_version = str(self.version)
        self.lease = copy.deepcopy(body)
        return body

    def replace_namespaced_lease(self, name: str, ns: str, body: Any) -> Any:
        self._check()
        if body.metadata.resource_version != self.lease.metadata.resource_version:
            raise ApiException(status=409)
        self.version += 1
        body.metadata.resource_version = str(self.version)
        self.lease = copy.deepcopy(body)
        return body


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(leader.time, "monotonic", c)
    return c


def test_one_leader_and_a_takeover_only_after_the_lease_goes_unrenewed(clock: Clock) -> None:
    api = FakeLeases()
    a, b = Elector("ns", "l", "a", api), Elector("ns", "l", "b", api)
    assert a.attempt() and not b.attempt()
    clock.now += 5
    assert a.attempt() and not b.attempt()  # renewed: b saw the record change
    clock.now += leader.LEASE_SECONDS - 1
    assert not b.attempt()  # a stopped renewing, but not for long enough yet
    clock.now += 2
    assert b.attempt() and api.lease.spec.holder_identity == "b" and api.lease.spec.lease_transitions == 1
    assert not a.attempt()  # the old leader, back, is a standby now


def test_two_candidates_racing_for_an_expired_lease_cannot_both_win(clock: Clock) -> None:
    api = FakeLeases()
    assert Elector("ns", "l", "old", api).attempt()
    b, c = Elector("ns", "l", "b", api), Elector("ns", "l", "c", api)
    assert not b.attempt() and not c.attempt()  # both observe the record now
    clock.now += leader.LEASE_SECONDS + 1
    read = api.read_namespaced_lease

    def stale_read(name: str, ns: str) -> Any:  # c read before b wrote
        lease = read(name, ns)
        api.read_namespaced_lease = read
        assert b.attempt()
        return lease

    api.read_namespaced_lease = stale_read
    assert not c.attempt()
    assert api.lease.spec.holder_identity == "b"


def test_a_leader_that_cannot_renew_steps_down_before_its_lease_could_be_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leader, "RETRY_SECONDS", 0.01)
    monkeypatch.setattr(leader, "RENEW_DEADLINE", 0.1)
    api = FakeLeases()
    events: list[str] = []
    elector = Elector("ns", "l", "a", api)

    async def go() -> None:
        task = asyncio.create_task(elector.run(lambda: events.append("started"), lambda: events.append("stopped")))
        await asyncio.sleep(0.05)
        api.down = True  # renewals fail from now on
        await asyncio.wait_for(task, 2)

    asyncio.run(go())
    assert events == ["started", "stopped"]

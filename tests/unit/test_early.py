"""A starting replica is routed to once it answers the gateway's own probe (early.py), only for the
engines a request waits for, and never for a Failed engine or a terminating pod."""

from __future__ import annotations

import dataclasses

from roundhouse_api import Family, Mode
from roundhouse_gateway.engines.catalog import Catalog, Engine, ModeState
from roundhouse_gateway.engines.early import still_starting, to_probe, with_early
from roundhouse_gateway.routing.route import Features, route

A, B = "http://10.0.0.1:8080", "http://10.0.0.2:8080"


def engine(name: str = "tiny", **kw: object) -> Engine:
    base = Engine(name=name, family=Family.LLAMACPP, served=frozenset([name]), endpoints=(), upstream_model=name,
                  ready=False, phase="Starting", starting=(A, B))  # fmt: skip
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def catalog(*engines: Engine) -> Catalog:
    return Catalog(engines=engines, mode=ModeState(mode=Mode.ON_DEMAND))


def test_a_confirmed_starting_replica_becomes_routable() -> None:
    c = with_early(catalog(engine()), {A})
    e = c.by_name("tiny")
    assert e is not None and e.endpoints == (A,) and e.ready
    d = route(Features(model="tiny"), c, lambda _: True, lambda _: 0.0, 1)
    assert [x.endpoint for x in d.candidates] == [A] and d.activate is None


def test_unconfirmed_replicas_leave_the_engine_waiting() -> None:
    c = with_early(catalog(engine()), set())
    assert c.by_name("tiny") == engine()
    d = route(Features(model="tiny"), c, lambda _: True, lambda _: 0.0, 1)
    assert d.activate == "tiny" and not d.candidates


def test_a_failed_engine_takes_no_early_replica() -> None:
    c = with_early(catalog(engine(phase="Failed")), {A})
    assert c.by_name("tiny") == engine(phase="Failed")


def test_ready_replicas_are_kept_once() -> None:
    c = with_early(catalog(engine(endpoints=(A,), ready=True, starting=(A, B))), {A, B})
    e = c.by_name("tiny")
    assert e is not None and e.endpoints == (A, B)


def test_confirmations_end_when_the_replica_is_ready_or_gone() -> None:
    assert still_starting(catalog(engine(starting=(B,))), {A, B}) == {B}
    assert still_starting(catalog(engine(starting=())), {A, B}) == set()


def test_only_the_waited_for_engines_replicas_are_probed() -> None:
    c = catalog(engine("one"), engine("two", starting=("http://10.0.0.9:8080",)))
    assert [(e.name, ep) for e, ep in to_probe(c, {"one"}, {A})] == [("one", B)]
    assert to_probe(c, set(), set()) == []

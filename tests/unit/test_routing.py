"""route(): a table of request features x engine sets x modes -> candidates and reason."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from roundhouse_api import AutoRules, Family, Mode, SwitchPolicy
from roundhouse_gateway.engines.catalog import Catalog, Engine, ModeState
from roundhouse_gateway.routing.route import Features, route


def eng(name: str, family: Family, model: str = "m", **kw: Any) -> Engine:
    endpoints = kw.pop("endpoints", (f"http://{name}:1",))
    return Engine(name=name, family=family, served=frozenset([model, f"{model}-alias"]), endpoints=endpoints,
                  upstream_model=model, **kw)  # fmt: skip


V = eng("v", Family.VLLM, capabilities=frozenset({"tools", "jsonSchema"}), context_length=32768)
L = eng("l", Family.LLAMACPP, context_length=8192, task_types=frozenset({"chat"}))
OL = eng("o", Family.OLLAMA, context_length=4096)
X = eng("x", Family.EXTERNAL, model="m")
ENGINES = (V, L, OL, X)
ALL_UP: set[str] = set()


def cat(mode: Mode | None = Mode.AUTO, engines: tuple[Engine, ...] = ENGINES, **mode_kw: Any) -> Catalog:
    return Catalog(engines, ModeState(mode=mode, **mode_kw))


def names(catalog: Catalog, f: Features, down: set[str] = ALL_UP, load: dict[str, int] | None = None) -> list[str]:
    d = route(f, catalog, lambda ep: ep not in down, lambda ep: (load or {}).get(ep, 0))
    assert d.error is None, d.error
    return [c.engine.name for c in d.candidates]


TABLE = [
    # (id, features, catalog, expected first engines in order, reason fragment)
    ("mode-vllm", Features("m"), cat(Mode.VLLM), ["v", "x"], "model"),
    ("mode-ollama", Features("m"), cat(Mode.OLLAMA), ["o", "x"], "model"),
    ("mode-llamacpp", Features("m"), cat(Mode.LLAMACPP), ["l", "x"], "model"),
    ("alias-served", Features("m-alias"), cat(Mode.VLLM), ["v", "x"], "model"),
    ("override-family", Features("m", override="ollama"), cat(Mode.AUTO), ["o"], "override:ollama"),
    ("override-gguf-alias", Features("m", override="gguf"), cat(Mode.AUTO), ["l"], "override:gguf"),
    ("override-name-beats-mode", Features("m", override="l"), cat(Mode.VLLM), ["l"], "override:l"),
    ("override-auto-is-no-override", Features("m", override="auto"), cat(Mode.VLLM), ["v", "x"], "model"),
    ("tools-to-declared", Features("m", tools=True), cat(Mode.AUTO), ["v"], "capability:tools"),
    ("json-schema-to-declared", Features("m", json_schema=True), cat(Mode.AUTO), ["v"], "capability:jsonSchema"),
    ("context-smallest-fit", Features("m", prompt_tokens=5000, max_tokens=1000), cat(Mode.AUTO),
     ["l", "v", "x"], "context:6000"),
    ("context-only-largest", Features("m", prompt_tokens=20000), cat(Mode.AUTO), ["v", "x"], "context:20000"),
    ("task-prefers-family", Features("m", task="chat"), cat(Mode.AUTO), ["l"], "task:chat"),
]  # fmt: skip


@pytest.mark.parametrize(("f", "catalog", "first", "reason"), [t[1:] for t in TABLE], ids=[t[0] for t in TABLE])
def test_route_table(f: Features, catalog: Catalog, first: list[str], reason: str) -> None:
    d = route(f, catalog, lambda ep: True, lambda ep: 0)
    got = [c.engine.name for c in d.candidates]
    assert got[: len(first)] == first
    assert reason in d.reason


def test_task_family_rule_from_the_mode() -> None:
    c = cat(Mode.AUTO, rules=AutoRules(task_families={"extraction": Family.VLLM}))
    assert names(c, Features("m", task="extraction"))[0] == "v"


def test_rules_can_be_switched_off() -> None:
    c = cat(Mode.AUTO, rules=AutoRules(capabilities=False, context_length=False))
    assert set(names(c, Features("m", tools=True, prompt_tokens=20000))) == {"v", "l", "o", "x"}


def test_least_outstanding_then_weight_and_priority() -> None:
    two = eng("two", Family.VLLM, endpoints=("http://a:1", "http://b:1"))
    c = cat(Mode.VLLM, (two,))
    d = route(Features("m"), c, lambda ep: True, {"http://a:1": 5, "http://b:1": 1}.__getitem__)
    assert [c.endpoint for c in d.candidates] == ["http://b:1", "http://a:1"]
    heavy = dataclasses.replace(V, name="heavy", weight=400, endpoints=("http://h:1",))
    load = {"http://v:1": 1, "http://h:1": 2}  # 2/400 beats 1/100
    assert names(cat(Mode.VLLM, (V, heavy)), Features("m"), load=load)[0] == "heavy"
    top = dataclasses.replace(V, name="top", priority=10, endpoints=("http://t:1",))
    assert names(cat(Mode.VLLM, (V, top)), Features("m"), load={"http://t:1": 50})[0] == "top"


def test_unhealthy_endpoints_are_skipped() -> None:
    assert names(cat(Mode.VLLM), Features("m"), down={"http://v:1"}) == ["x"]


def test_engine_at_its_cap_yields_to_the_next() -> None:
    capped = dataclasses.replace(V, max_concurrency=2)
    d = route(Features("m"), cat(Mode.AUTO, (capped, OL)), lambda ep: True, {"http://v:1": 2, "http://o:1": 7}.get)
    assert [c.engine.name for c in d.candidates] == ["o", "v"] and "concurrency-overflow" in d.reason


def test_not_ready_engines_are_not_candidates() -> None:
    loading = dataclasses.replace(L, ready=False)
    assert names(cat(Mode.AUTO, (V, loading)), Features("m")) == ["v"]


ERRORS = [
    ("unknown-model", Features("nope"), cat(), 404, "model_not_found"),
    ("override-unknown", Features("m", override="tgi"), cat(), 400, "invalid_engine"),
    ("override-family-absent", Features("m", override="ollama"), cat(engines=(V,)), 400, "invalid_engine"),
    ("too-long-for-all", Features("m", prompt_tokens=40000), cat(engines=(V, L, OL)), 400, "context_length_exceeded"),
    ("family-switched-off", Features("m"), cat(Mode.OLLAMA, engines=(V,)), 503, "engine_switched_off"),
    ("all-down", Features("m"), cat(Mode.VLLM, engines=(V,)), 503, "no_healthy_engine"),
]  # fmt: skip


@pytest.mark.parametrize(("f", "catalog", "status", "code"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_route_errors(f: Features, catalog: Catalog, status: int, code: str) -> None:
    d = route(f, catalog, lambda ep: False, lambda ep: 0)
    assert d.error is not None and d.error[:2] == (status, code)


def test_fallback_chain_when_nothing_healthy() -> None:
    primary = dataclasses.replace(V, fallback=("x",))
    d = route(Features("m"), cat(Mode.VLLM, (primary, X)), lambda ep: ep == "http://x:1", lambda ep: 0)
    assert [c.engine.name for c in d.candidates] == ["x"]
    other_model = eng("ext", Family.EXTERNAL, model="gpt-4o")
    primary = dataclasses.replace(V, fallback=("ext",))
    d = route(Features("m"), cat(Mode.VLLM, (primary, other_model)), lambda ep: ep == "http://ext:1", lambda ep: 0)
    assert [c.engine.name for c in d.candidates] == ["ext"] and d.reason == "fallback:ext"


def test_switch_holds_requests_for_the_incoming_family() -> None:
    incoming = dataclasses.replace(OL, ready=False)
    c = cat(Mode.OLLAMA, (V, incoming), switching=True)
    d = route(Features("m"), c, lambda ep: True, lambda ep: 0)
    assert d.hold_for == Family.OLLAMA and d.error is None
    c = cat(Mode.OLLAMA, (V, incoming), switching=True, policy=SwitchPolicy(during_switch="reject"))
    assert route(Features("m"), c, lambda ep: True, lambda ep: 0).error is not None


@pytest.mark.parametrize(("path", "served_by"), [
    ("/v1/chat/completions", ["v", "l", "o", "x"]),
    ("/v1/responses", ["v", "l", "o", "x"]),
    ("/v1/rerank", ["v", "l"]),
    ("/v1/score", ["v"]),
    ("/tokenize", ["v", "l"]),
    ("/detokenize", ["v", "l"]),
])  # fmt: skip
def test_an_endpoint_goes_only_to_families_that_serve_it(path: str, served_by: list[str]) -> None:
    assert sorted(names(cat(Mode.AUTO), Features("m", path=path))) == sorted(served_by)


def test_an_endpoint_no_engine_of_the_model_serves_is_a_400_naming_model_and_family() -> None:
    d = route(Features("m", path="/v1/score"), cat(Mode.AUTO, engines=(L, OL)), lambda ep: True, lambda ep: 0)
    assert d.error == (400, "unsupported_endpoint", "The model `m` is served by GGUF (llama.cpp) and Ollama engines,"
                                                    " which do not serve /v1/score.")  # fmt: skip


def test_a_key_limited_to_some_engines_sees_only_them() -> None:
    assert set(names(cat(Mode.AUTO), Features("m", engines=("v", "l*")))) == {"v", "l"}
    d = route(Features("m", engines=("gpu-*",)), cat(Mode.AUTO), lambda ep: True, lambda ep: 0)
    assert d.error is not None and d.error[:2] == (404, "model_not_found") and "do not have access" in d.error[2]

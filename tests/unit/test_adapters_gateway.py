"""The gateway's side of LoRA adapters: models in the catalog, replicas that hold them, the body each
engine takes, /v1/models, prefix affinity per adapter."""

from __future__ import annotations

import json
from typing import Any

from roundhouse_api import InferenceEngine
from roundhouse_gateway.engines.catalog import Catalog, Engine, ModeState, engine_from_resource
from roundhouse_gateway.engines.models import model_list
from roundhouse_gateway.request.forward import payload
from roundhouse_gateway.routing.affinity import keyed, prefix_key
from roundhouse_gateway.routing.route import Features, route

ADAPTERS = [{"name": "sql", "source": "org/sql-lora"}, {"name": "chat", "source": "org/chat-lora"}]
URLS = ["http://r1", "http://r2"]


def engine(family: str, endpoints: list[str] | None = None, **spec: Any) -> Engine:
    source = {"vllm": "org/base", "llamacpp": "/m/base.gguf"}[family]
    adapters = ADAPTERS if family == "vllm" else [{"name": "sql", "source": "/l/sql.gguf"},
                                                  {"name": "chat", "source": "/l/chat.gguf", "scale": 0.5}]  # fmt: skip
    doc = {"metadata": {"name": "base"}, "spec": {"engine": family, "model": {"source": source, "servedName": "m"},
                                                  "adapters": adapters, **spec}}  # fmt: skip
    return engine_from_resource(InferenceEngine.model_validate(doc), endpoints=endpoints or URLS)


def test_adapters_are_served_names_with_their_routes() -> None:
    vllm, llama = engine("vllm"), engine("llamacpp")
    assert vllm.served == llama.served == {"m", "sql", "chat"}
    assert vllm.runtime_adapters and not llama.runtime_adapters  # vLLM loads them on running replicas
    static = engine("vllm", vllm={"runtimeAdapterUpdates": False})
    assert not static.runtime_adapters  # --lora-modules: every replica starts with them
    assert vllm.base == "m" and set(vllm.adapter) == {"sql", "chat"}


def test_an_adapter_loaded_at_run_time_goes_only_to_replicas_that_list_it() -> None:
    cat = Catalog((engine("vllm"),), ModeState())
    loaded = {"http://r1": {"sql"}, "http://r2": set()}

    def holds(e: Engine, ep: str, model: str) -> bool:
        return not e.runtime_adapters or model not in e.adapter or model in loaded[ep]

    for turn in range(6):
        d = route(Features("sql"), cat, lambda ep: True, lambda ep: 0.0, turn, holds)
        assert [c.endpoint for c in d.candidates] == ["http://r1"]
        base = route(Features("m"), cat, lambda ep: True, lambda ep: 0.0, turn, holds)
        assert {c.endpoint for c in base.candidates} == set(URLS)  # the base model: every replica
    waiting = route(Features("chat"), cat, lambda ep: True, lambda ep: 0.0, 0, holds)
    assert waiting.error is not None and waiting.error[:2] == (503, "adapter_loading") and waiting.retry_after == 2
    static = Catalog((engine("llamacpp"),), ModeState())  # adapters on the command line: every replica has them
    d = route(Features("chat"), static, lambda ep: True, lambda ep: 0.0, 0, lambda e, ep, m: False)
    assert {c.endpoint for c in d.candidates} == set(URLS)


def test_each_engine_gets_the_body_its_family_takes_for_an_adapter() -> None:
    body = {"model": "chat", "messages": [{"role": "user", "content": "x"}], "lora": [{"id": 9, "scale": 9}]}
    raw = json.dumps(body).encode()
    llama = json.loads(payload(body, raw, Features("chat"), engine("llamacpp")))
    assert llama["model"] != "chat" and llama["lora"] == [{"id": 1, "scale": 0.5}]  # the base, with chat's id
    vllm = json.loads(payload(body, raw, Features("chat"), engine("vllm")))
    assert vllm["model"] == "chat" and vllm["messages"] == body["messages"]
    base = {"model": "m", "messages": body["messages"]}
    base_raw = json.dumps(base).encode()
    # The base goes to llama-server as the client sent it: no "lora" field, so the command line's
    # scale 0 applies every adapter at 0 (a "lora" here would apply adapters to the base's answers).
    assert payload(base, base_raw, Features("m"), engine("llamacpp")) == base_raw
    assert payload(base, base_raw, Features("m"), engine("vllm")) == base_raw


def test_models_list_adapters_with_their_parent() -> None:
    data = {m["id"]: m for m in model_list(Catalog((engine("vllm"),), ModeState()))["data"]}
    assert set(data) == {"m", "sql", "chat"}
    assert data["sql"]["parent"] == "m" and "parent" not in data["m"]


def test_an_adapters_prefix_key_is_its_own() -> None:
    assert keyed(12345, "sql") != 12345 and keyed(12345, "sql") != keyed(12345, "chat")
    assert keyed(12345, "sql") == keyed(12345, "sql")


def test_the_same_prompt_for_each_adapter_keeps_to_a_replica_of_its_own() -> None:
    # Four replicas that all hold both adapters and carry no load: prefix affinity alone picks the replica.
    replicas = [f"http://r{i}" for i in range(1, 5)]
    cat = Catalog((engine("vllm", endpoints=replicas),), ModeState())

    def first(model: str, prompt: str, turn: int) -> str:
        body = {"model": model, "messages": [{"role": "system", "content": prompt}, {"role": "user", "content": "hi"}]}
        f = Features(model, prefix=prefix_key(body, "chat"))
        d = route(f, cat, lambda ep: True, lambda ep: 0.0, turn, lambda e, ep, m: True)
        assert d.reason.endswith("prefix-affinity"), d.reason
        return d.candidates[0].endpoint

    prompts = [f"You are assistant number {i}; answer in one line." for i in range(32)]
    where: dict[tuple[str, str], str] = {}
    for prompt in prompts:
        for model in ("m", "sql", "chat"):
            seen = {first(model, prompt, turn) for turn in range(4)}
            assert len(seen) == 1, (model, prompt, seen)  # each model's requests stick to one replica
            where[prompt, model] = seen.pop()
    # The same prompt under an adapter is another KV cache: keyed on the prefix alone, the base and
    # both adapters would pile onto one replica for every prompt; keyed on the adapter too, they go
    # where their own key lands (another replica for about three prompts in four, with four replicas).
    for a, b in (("m", "sql"), ("m", "chat"), ("sql", "chat")):
        apart = sum(where[p, a] != where[p, b] for p in prompts)
        assert apart >= len(prompts) // 2, (a, b, apart)
    for model in ("sql", "chat"):  # an adapter's prompts still spread over every replica
        assert {where[p, model] for p in prompts} == set(replicas), model

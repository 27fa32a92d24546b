"""LoRA adapters (spec.adapters): what each family renders and how the gateway asks for an adapter."""

from __future__ import annotations

from typing import Any

from roundhouse_api import InferenceEngine
from roundhouse_api.families import FAMILIES, adapter_routes, replica_serves_adapter
from roundhouse_operator.render import render
from tests.support.manifests import engine as engine_doc

TWO = [{"name": "sql", "source": "org/sql-lora"}, {"name": "chat", "source": "/models/loras/chat"}]


def make(**spec: Any) -> InferenceEngine:
    doc = engine_doc(**spec)
    doc["metadata"] |= {"namespace": "models", "uid": "uid-1"}
    return InferenceEngine.model_validate(doc)


def llama(adapters: list[dict[str, Any]], **spec: Any) -> InferenceEngine:
    model = {"source": "/models/base.gguf", "servedName": "base", "aliases": ["base-q4"]}
    return make(engine="llamacpp", model=model, adapters=adapters, **spec)


def container(ie: InferenceEngine) -> dict[str, Any]:
    deployment = next(o for o in render(ie, 1) if o["kind"] == "Deployment")
    return deployment["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def args(ie: InferenceEngine) -> list[str]:
    return container(ie)["containers"][0]["args"]  # type: ignore[no-any-return]


def env(ie: InferenceEngine) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container(ie)["containers"][0]["env"]}


# --- rendering ------------------------------------------------------------------------------------


def test_vllm_without_adapters_renders_no_lora_flags() -> None:
    ie = make()
    assert not [a for a in args(ie) if "lora" in a]
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in env(ie)
    assert not FAMILIES[ie.spec.engine].runtime_adapters(ie.spec)


def test_vllm_runtime_updates_enable_lora_and_leave_the_adapters_to_the_operator() -> None:
    ie = make(adapters=TWO, vllm={"maxLoras": 2, "maxLoraRank": 64})
    argv = args(ie)
    assert argv[argv.index("--enable-lora") :] == ["--enable-lora", "--max-loras", "2", "--max-lora-rank", "64"]
    assert "--lora-modules" not in argv
    assert env(ie)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "1"
    assert FAMILIES[ie.spec.engine].runtime_adapters(ie.spec)


def test_vllm_pod_template_does_not_change_with_the_adapters_under_runtime_updates() -> None:
    # A changed adapter list must not roll the replicas: the operator loads and unloads instead.
    one = make(adapters=TWO[:1], vllm={"maxLoraRank": 16})
    both = make(adapters=TWO, vllm={"maxLoraRank": 16})
    none = make(adapters=[], vllm={"maxLoraRank": 16})
    assert container(one) == container(both) == container(none)


def test_vllm_without_runtime_updates_starts_with_lora_modules() -> None:
    ie = make(adapters=TWO, vllm={"runtimeAdapterUpdates": False})
    argv = args(ie)
    i = argv.index("--lora-modules")
    assert argv[i + 1 : i + 3] == ["sql=org/sql-lora", "chat=/models/loras/chat"]
    assert "--enable-lora" in argv and "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in env(ie)
    assert not FAMILIES[ie.spec.engine].runtime_adapters(ie.spec)


def test_vllm_extra_args_come_after_the_lora_flags() -> None:
    ie = make(adapters=TWO, vllm={"runtimeAdapterUpdates": False, "extraArgs": ["--enforce-eager"]})
    assert args(ie)[-1] == "--enforce-eager"


def test_llamacpp_loads_every_adapter_unapplied_in_spec_order() -> None:
    ie = llama(
        [
            {"name": "a", "source": "loras/a.gguf"},
            {"name": "b", "source": "https://h/x/b.gguf", "scale": 0.5},
            {"name": "c", "source": "/abs/c.gguf"},
        ],
        cache={"mountPath": "/cache"},
    )
    argv = args(ie)
    loras = [argv[i + 1] for i, a in enumerate(argv) if a == "--lora-scaled"]
    assert loras == ["/cache/loras/a.gguf:0", "/cache/lora/b.gguf:0", "/abs/c.gguf:0"]
    assert "--lora" not in argv  # its scale 1 would apply every adapter to requests for the base
    assert "--lora-init-without-apply" in argv
    init = container(ie)["initContainers"]
    assert [c["name"] for c in init] == ["fetch-adapters"]
    assert init[0]["command"] == ["roundhouse-fetch", "--dest", "/cache/lora", "https://h/x/b.gguf"]


def test_llamacpp_without_adapters_renders_no_lora_flags() -> None:
    ie = llama([])
    assert not [a for a in args(ie) if "lora" in a]


def test_sglang_starts_with_its_adapters() -> None:
    ie = make(engine="sglang", adapters=TWO)
    argv = args(ie)
    i = argv.index("--lora-paths")
    assert argv[i - 1] == "--enable-lora"
    assert argv[i + 1 :] == ["sql=org/sql-lora", "chat=/models/loras/chat"]
    with_key = make(engine="sglang", adapters=TWO, sglang={"apiKeySecretRef": {"name": "k", "key": "k"}})
    argv = args(with_key)
    assert argv[argv.index("--lora-paths") + 3] == "--api-key"  # the list ends at the next flag


# --- what the gateway calls -----------------------------------------------------------------------


def test_vllm_adapters_are_models_of_their_own_name() -> None:
    routes = adapter_routes(make(adapters=TWO).spec)
    assert list(routes) == ["sql", "chat"]
    assert routes["sql"].rewrite({"model": "sql", "messages": []}) == {"model": "sql", "messages": []}


def test_llamacpp_adapters_are_the_base_with_a_per_request_lora_field() -> None:
    ie = llama([{"name": "a", "source": "a.gguf"}, {"name": "b", "source": "b.gguf", "scale": 0.25}])
    routes = adapter_routes(ie.spec)
    base = FAMILIES[ie.spec.engine].upstream_model(ie.spec)
    assert base == "base"  # llama-server names itself by the first of its sorted aliases
    assert routes["a"].rewrite({"model": "a", "lora": [{"id": 1, "scale": 9}]}) == {
        "model": "base",
        "lora": [{"id": 0, "scale": 1.0}],
    }
    assert routes["b"].lora == ((1, 0.25),)


def test_sglang_adapters_are_asked_for_as_base_colon_adapter() -> None:
    routes = adapter_routes(make(engine="sglang", adapters=TWO).spec)
    assert routes["chat"].model == "m:chat"


def test_families_without_adapters_route_none() -> None:
    assert adapter_routes(make().spec) == {}
    assert adapter_routes(make(engine="ollama", model={"source": "llama3", "servedName": "l"}).spec) == {}


def test_which_replicas_serve_an_adapter() -> None:
    listing = b'{"data": [{"id": "m", "parent": null}, {"id": "sql", "root": "org/sql-lora", "parent": "m"}]}'
    runtime = make(adapters=TWO).spec
    assert replica_serves_adapter(runtime, "sql", listing)
    assert not replica_serves_adapter(runtime, "chat", listing)  # not loaded there yet
    assert not replica_serves_adapter(runtime, "sql", None)  # no listing read yet
    assert not replica_serves_adapter(runtime, "other", listing)  # not in the spec
    on_the_command_line = make(adapters=TWO, vllm={"runtimeAdapterUpdates": False}).spec
    assert replica_serves_adapter(on_the_command_line, "chat", None)
    assert replica_serves_adapter(llama([{"name": "a", "source": "a.gguf"}]).spec, "a", None)

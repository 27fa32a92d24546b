"""The per-family modules: what each family declares, and the flags it renders for its pinned version."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from roundhouse_api import Family, InferenceEngine, InferenceEngineSpec, LlamaCppConfig
from roundhouse_api.families import FAMILIES, repeated_managed_flags
from roundhouse_api.families.llamacpp import load_mode
from roundhouse_api.families.ollama import has_model
from roundhouse_operator.render import render


def spec(**kw: Any) -> InferenceEngineSpec:
    return InferenceEngineSpec.model_validate(kw)


def llama(**cfg: Any) -> InferenceEngineSpec:
    return spec(engine="llamacpp", model={"source": "/m/x.gguf", "servedName": "x-chat", "aliases": ["b", "a"]},
                llamacpp=cfg)  # fmt: skip


def test_every_family_is_declared_once_with_what_the_components_read() -> None:
    assert set(FAMILIES) == set(Family)
    for fam, f in FAMILIES.items():
        assert f.family == fam
        assert "/v1/chat/completions" in f.openai_paths and f.serves("/v1/models")
        if fam != Family.EXTERNAL:
            assert f.image and f.version and f.default_port
            assert f.version in f.image


def test_pins_are_the_versions_the_contract_tests_run() -> None:
    assert FAMILIES[Family.LLAMACPP].image == "ghcr.io/ggml-org/llama.cpp:server-cuda-b11312"
    assert FAMILIES[Family.OLLAMA].image == "ollama/ollama:0.17.4"
    assert FAMILIES[Family.VLLM].image == "vllm/vllm-openai:v0.33.0"
    assert FAMILIES[Family.SGLANG].image == "lmsysorg/sglang:v0.5.23"


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [({}, None), ({"mlock": True}, "mmap+mlock"), ({"noMmap": True}, "none"),
     ({"mlock": True, "noMmap": True}, "mlock"), ({"loadMode": "dio"}, "dio"), ({"mlock": False}, None)],
)  # fmt: skip
def test_mlock_and_no_mmap_become_load_mode(cfg: dict[str, Any], expected: str | None) -> None:
    """llama.cpp replaced --mlock/--no-mmap (now fatal "invalid argument") with --load-mode."""
    assert load_mode(LlamaCppConfig.model_validate(cfg)) == expected
    args = FAMILIES[Family.LLAMACPP].container(llama(**cfg), "/models", "img").container["args"]
    assert "--mlock" not in args and "--no-mmap" not in args
    assert (args[args.index("--load-mode") + 1] if "--load-mode" in args else None) == expected


def test_load_mode_with_the_old_booleans_is_refused() -> None:
    with pytest.raises(ValidationError, match="loadMode replaces mlock and noMmap"):
        llama(loadMode="mmap", mlock=True)


def test_llama_server_is_called_by_its_first_sorted_alias() -> None:
    """llama-server keeps --alias names in a sorted set and answers as the first: the gateway sends that."""
    f = FAMILIES[Family.LLAMACPP]
    s = llama()
    args = f.container(s, "/models", "img").container["args"]
    assert args[args.index("--alias") + 1] == "x-chat,b,a"
    assert f.upstream_model(s) == "a" and f.listed_models(s) == ["a"]


@pytest.mark.parametrize(("cfg", "per_request"), [({}, None), ({"contextSize": 8192}, 8192),
                                                  ({"contextSize": 8192, "parallel": 4}, 2048)])  # fmt: skip
def test_llama_server_context_per_request_is_split_over_slots(cfg: dict[str, Any], per_request: int | None) -> None:
    assert FAMILIES[Family.LLAMACPP].context_per_request(llama(**cfg)) == per_request


def test_ollama_is_known_by_its_tag_and_lists_latest() -> None:
    f = FAMILIES[Family.OLLAMA]
    s = spec(engine="ollama", model={"source": "qwen2.5", "servedName": "q"})
    assert f.upstream_model(s) == "qwen2.5" and f.listed_models(s) == ["qwen2.5:latest"]
    assert has_model(b'{"models":[{"name":"qwen2.5:latest"}]}', "qwen2.5")
    assert not has_model(b'{"models":[{"name":"qwen2.5:7b"}]}', "qwen2.5")
    assert not has_model(b"not json", "qwen2.5")
    assert f.probe_ok(200, b'{"models":[]}', "qwen2.5") == (False, "model qwen2.5 not pulled yet")


def test_managed_flags_are_found_in_both_forms() -> None:
    managed = FAMILIES[Family.LLAMACPP].managed_flags
    assert repeated_managed_flags(["--port=9", "--alias", "x", "--threads", "4"], managed) == ["--port=9", "--alias"]
    assert {"--served-model-name", "--port", "--host"} <= FAMILIES[Family.VLLM].managed_flags


def test_helper_image_runs_the_fetch_and_pull_helpers() -> None:
    url_engine = InferenceEngine.model_validate({
        "metadata": {"name": "g", "namespace": "n", "uid": "u"},
        "spec": {"engine": "llamacpp", "model": {"source": "https://h/x.gguf", "servedName": "x"}}})  # fmt: skip
    pod = render(url_engine, 1, helper_image="registry.local/roundhouse:9")[0]["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["image"] == "registry.local/roundhouse:9"
    assert pod["initContainers"][0]["command"] == ["roundhouse-fetch", "--dest", "/models/gguf", "https://h/x.gguf"]


def test_hostile_model_strings_stay_single_arguments() -> None:
    """The CRD refuses shell metacharacters in a source; were one to get through all the same, it would
    still be one argv element of a helper, never shell text."""
    tag = 'x"; rm -rf / #$(id)`id`'
    doc = {
        "metadata": {"name": "o", "uid": "u"},
        "spec": {"engine": "ollama", "model": {"source": "ok", "servedName": "o"}},
    }
    with pytest.raises(ValidationError, match=r"source\n  String should match pattern"):
        InferenceEngine.model_validate({**doc, "spec": {**doc["spec"], "model": {"source": tag, "servedName": "o"}}})
    ie = InferenceEngine.model_validate(doc)
    ie.spec.model.source = tag
    pod = render(ie, 1)[0]["spec"]["template"]["spec"]
    for c in [*pod["containers"], *pod.get("initContainers", [])]:
        assert c["command"][0] not in ("/bin/sh", "sh", "bash", "/bin/bash")
    assert pod["containers"][1]["command"][-1] == tag


@pytest.mark.parametrize(("phase", "routable"), [("Ready", True), ("Degraded", True), ("Starting", False),
                                                 ("Failed", False), ("Standby", False), (None, True)])  # fmt: skip
def test_the_gateway_routes_to_engines_with_some_ready_replicas(phase: str | None, routable: bool) -> None:
    """A Degraded engine (1 of 2 replicas ready) still serves from its ready endpoints; found when a pod
    killed under load on the real node made the gateway answer 503 no_healthy_engine."""
    from roundhouse_gateway.engines.catalog import engine_from_resource

    doc: dict[str, Any] = {
        "metadata": {"name": "e"},
        "spec": {"engine": "vllm", "model": {"source": "a", "servedName": "m"}},
    }
    if phase:
        doc["status"] = {"phase": phase}
    assert engine_from_resource(InferenceEngine.model_validate(doc), endpoints=["http://x"]).ready is routable

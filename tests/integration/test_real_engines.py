"""The real llama-server and the real Ollama of the pinned versions behind the gateway, serving a tiny
GGUF that the test writes: real tokenizers, samplers and SSE, in milliseconds on CPU. The engines
start from the command lines the operator renders (tests/support/engines.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.support import engines, processes, tinygguf
from tests.support.processes import Process

pytestmark = pytest.mark.integration
KEY = "sk-real"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "real-engines"


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tinygguf.write(tmp_path_factory.mktemp("model") / "tiny.gguf")


@pytest.fixture(scope="module")
def llama(gguf: Path) -> Iterator[Process]:
    container = engines.llama_container(alias="tiny-chat,tiny")
    proc = engines.llama_server(container, gguf, ARTIFACTS).start(timeout=60)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def ollama(gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    models = tmp_path_factory.mktemp("ollama") / "models"
    proc = engines.ollama(engines.ollama_container(), models, ARTIFACTS).start(timeout=60)
    engines.ollama_create(proc, "tiny-ollama:latest", gguf)
    yield proc
    proc.stop()


def ie(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine", "metadata": {"name": name},
            "spec": spec}  # fmt: skip


@pytest.fixture(scope="module")
def vllm_sim() -> Iterator[Process]:
    """vLLM itself cannot run here: the simulator answers in vLLM 0.33.0's shapes and routes."""
    proc = processes.enginesim("vllm", "v", ["tiny-v"], ARTIFACTS).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def gateway(llama: Process, ollama: Process, vllm_sim: Process, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Process]:  # fmt: skip
    docs = [
        ie("sim-vllm", {"engine": "vllm", "model": {"source": "org/tiny", "servedName": "tiny-v"},
                        "endpoints": [vllm_sim.url]}),  # type: ignore[attr-defined]
        ie("tiny-llama", {"engine": "llamacpp", "model": {"source": "/m/tiny.gguf", "servedName": "tiny-chat",
                                                          "aliases": ["tiny"]},
                          "endpoints": [llama.url]}),  # type: ignore[attr-defined]
        ie("tiny-ollama", {"engine": "ollama", "model": {"source": "tiny-ollama:latest", "servedName": "tiny-o"},
                           "endpoints": [ollama.url]}),  # type: ignore[attr-defined]
    ]  # fmt: skip
    config = tmp_path_factory.mktemp("gw") / "gw.yaml"
    config.write_text(yaml.safe_dump_all(docs))
    gw = processes.gateway(config, ARTIFACTS, [KEY], []).start()
    deadline_ok = False
    for _ in range(50):  # both engines healthy through the gateway's own probes
        models = httpx.get(gw.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()  # type: ignore[attr-defined]
        if {"tiny-chat", "tiny", "tiny-o", "tiny-v"} <= {m["id"] for m in models["data"]}:
            deadline_ok = True
            break
    assert deadline_ok
    yield gw
    gw.stop()


def client(gw: Process) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0, timeout=60)  # type: ignore[attr-defined]


@pytest.mark.parametrize("model", ["tiny-chat", "tiny"])
def test_llama_server_answers_both_names(gateway: Process, model: str) -> None:
    raw = client(gateway).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=8,
        logit_bias={"2": -100})  # never end early on </s>: a random-weight model may sample it  # fmt: skip
    answer = raw.parse()
    assert raw.headers["x-roundhouse-engine"] == "tiny-llama"
    # llama-server calls itself by the first of its sorted aliases; the gateway sent it that name.
    assert answer.model == "tiny"
    assert answer.usage is not None and answer.usage.completion_tokens == 8
    assert answer.choices[0].message.content


def test_llama_server_streams_with_usage(gateway: Process) -> None:
    stream = client(gateway).chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": "hello"}], max_tokens=6, stream=True,
        stream_options={"include_usage": True}, logit_bias={"2": -100},  # never end early on </s>
    )  # fmt: skip
    chunks = list(stream)
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[-1].choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6


def test_ollama_answers_through_the_gateway(gateway: Process) -> None:
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="tiny-o", messages=[{"role": "user", "content": "hello"}], max_tokens=8)  # fmt: skip
    assert raw.headers["x-roundhouse-engine"] == "tiny-ollama"
    answer = raw.parse()
    assert answer.model == "tiny-ollama:latest"  # the gateway sent Ollama its own tag
    assert answer.choices[0].message.content is not None
    stream = client(gateway).chat.completions.create(
        model="tiny-o", messages=[{"role": "user", "content": "hello"}], max_tokens=6, stream=True)  # fmt: skip
    chunks = [c for c in stream if c.choices]
    assert chunks and chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_llama_server_embeddings_501_is_passed_on(gateway: Process) -> None:
    r = httpx.post(gateway.url + "/v1/embeddings", headers={"Authorization": f"Bearer {KEY}"},  # type: ignore[attr-defined]
                   json={"model": "tiny", "input": "hello"}, timeout=30)  # fmt: skip
    assert r.status_code == 501 and "--embeddings" in r.text


@pytest.mark.parametrize(
    ("model", "engine"), [("tiny", "tiny-llama"), ("tiny-o", "tiny-ollama"), ("tiny-v", "sim-vllm")]
)
def test_responses_through_the_gateway_stream_and_not(gateway: Process, model: str, engine: str) -> None:
    """POST /v1/responses, as the openai SDK sends it, to each family that serves it."""
    # Greedy: sampled, the random-weight model can pick </s> first and answer nothing (one run in a few hundred).
    raw = client(gateway).responses.with_raw_response.create(model=model, input="hello", max_output_tokens=16,
                                                             temperature=0)  # fmt: skip
    assert raw.headers["x-roundhouse-engine"] == engine
    answer = raw.parse()
    assert answer.status == "completed" and answer.output_text, answer
    assert answer.usage is not None and answer.usage.output_tokens > 0
    events = list(client(gateway).responses.create(model=model, input="hello", max_output_tokens=16, stream=True,
                                                   temperature=0))  # fmt: skip
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed", types
    assert any(t == "response.output_text.delta" for t in types)
    done = events[-1].response  # type: ignore[union-attr]
    assert done.usage is not None and done.usage.output_tokens > 0


def post(gw: Process, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(gw.url + path, headers={"Authorization": f"Bearer {KEY}"}, json=body, timeout=30)  # type: ignore[attr-defined]


RERANK = {"query": "green tea", "documents": ["black coffee", "green tea leaves", "tea"], "top_n": 2}


def test_rerank_and_score_reach_only_the_families_that_serve_them(gateway: Process, ollama: Process) -> None:
    ranked = post(gateway, "/v1/rerank", {"model": "tiny-v", **RERANK})
    assert ranked.status_code == 200 and ranked.headers["x-roundhouse-engine"] == "sim-vllm", ranked.text
    assert [r["index"] for r in ranked.json()["results"]] == [1, 2]
    scored = post(gateway, "/v1/score", {"model": "tiny-v", "text_1": "green tea", "text_2": ["tea", "coffee"]})
    assert scored.status_code == 200 and [d["index"] for d in scored.json()["data"]] == [0, 1], scored.text
    # llama-server serves /v1/rerank, and says itself that this one was not started for it.
    not_started = post(gateway, "/v1/rerank", {"model": "tiny", **RERANK})
    assert not_started.status_code == 501 and "--reranking" in not_started.text
    for path, body, model, family in [("/v1/rerank", RERANK, "tiny-o", "Ollama"),
                                      ("/v1/score", {"text_1": "a", "text_2": "b"}, "tiny", "GGUF (llama.cpp)"),
                                      ("/tokenize", {"prompt": "a"}, "tiny-o", "Ollama")]:  # fmt: skip
        refused = post(gateway, path, {"model": model, **body})
        error = refused.json()["error"]
        assert refused.status_code == 400 and error["code"] == "unsupported_endpoint" and error["param"] == "model"
        assert error["message"] == f"The model `{model}` is served by {family} engines, which do not serve {path}."
    # Ollama logs every request it gets (GIN lines): none of these reached it.
    asked = [line for line in ollama.log_path.read_text(errors="replace").splitlines() if "[GIN]" in line]
    assert asked and not [line for line in asked if "/v1/rerank" in line or "/tokenize" in line]


def test_tokenize_and_detokenize_with_the_engines_own_tokenizer(gateway: Process) -> None:
    tokens = post(gateway, "/tokenize", {"model": "tiny", "prompt": "hello world"})
    assert tokens.status_code == 200 and tokens.headers["x-roundhouse-engine"] == "tiny-llama", tokens.text
    ids = tokens.json()["tokens"]
    assert ids and all(isinstance(t, int) for t in ids)
    text = post(gateway, "/detokenize", {"model": "tiny", "tokens": ids})
    assert text.status_code == 200 and "hello" in text.json()["content"], text.text
    sim = post(gateway, "/tokenize", {"model": "tiny-v", "messages": [{"role": "user", "content": "hi there"}]})
    assert sim.status_code == 200 and sim.json()["count"] == len(sim.json()["tokens"])
    refused = post(gateway, "/tokenize", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
    assert refused.status_code == 400 and "tokenize a `prompt`, not `messages`" in refused.json()["error"]["message"]


def test_the_openapi_document_lists_every_endpoint_routed(gateway: Process) -> None:
    doc = httpx.get(gateway.url + "/openapi.json").json()  # type: ignore[attr-defined]
    assert doc["openapi"].startswith("3.1")
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/rerank",
                 "/v1/score", "/tokenize", "/detokenize"):  # fmt: skip
        assert "post" in doc["paths"][path], path
    assert "get" in doc["paths"]["/v1/models/{model}"]

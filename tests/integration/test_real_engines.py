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
def gateway(llama: Process, ollama: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    docs = [
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
        if {"tiny-chat", "tiny", "tiny-o"} <= {m["id"] for m in models["data"]}:
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
        model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=8)  # fmt: skip
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

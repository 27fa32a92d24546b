"""A real llama.cpp engine (llama-cpp-python's OpenAI server) behind the gateway, serving a tiny GGUF
that the test writes: real tokenizer, sampler and SSE, in milliseconds on CPU."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import yaml

from tests.support import processes, tinygguf
from tests.support.processes import Process

pytestmark = pytest.mark.integration
KEY = "sk-real"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "llamacpp"


@pytest.fixture
def llama(tmp_path: Path) -> Iterator[Process]:
    proc = processes.llama_server(tinygguf.write(tmp_path / "tiny.gguf"), ARTIFACTS).start(timeout=60)
    yield proc
    proc.stop()


def test_real_llama_cpp_answers_through_the_gateway(llama: Process, tmp_path: Path) -> None:
    engine = {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine", "metadata": {"name": "tiny-llama"},
              "spec": {"engine": "external", "model": {"source": "tiny", "servedName": "tiny-chat"},
                       "external": {"baseURL": f"{llama.url}/v1"}}}  # type: ignore[attr-defined]  # fmt: skip
    config = tmp_path / "gw.yaml"
    config.write_text(yaml.safe_dump(engine))
    gw = processes.gateway(config, ARTIFACTS, [KEY], []).start()
    try:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0)  # type: ignore[attr-defined]
        raw = client.chat.completions.with_raw_response.create(
            model="tiny-chat", messages=[{"role": "user", "content": "hello"}], max_tokens=8)  # fmt: skip
        answer = raw.parse()
        assert raw.headers["x-roundhouse-engine"] == "tiny-llama"
        assert answer.model == "tiny"  # the engine saw its own model name, rewritten by the gateway
        assert answer.usage is not None and answer.usage.completion_tokens == 8
        assert answer.choices[0].message.content
        stream = client.chat.completions.create(
            model="tiny-chat", messages=[{"role": "user", "content": "hello"}], max_tokens=6, stream=True,
            logit_bias={"2": -100},  # never end early on </s>
        )  # fmt: skip
        chunks = [c for c in stream if c.choices]
        pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
        assert len(pieces) >= 3  # byte tokens that end mid-character stream as empty deltas
        assert chunks[-1].choices[0].finish_reason == "length"
    finally:
        gw.stop()

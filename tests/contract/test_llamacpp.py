"""Every rendered llama-server command line, run by the real llama-server of the pinned build.

The binary is built from the llama.cpp tree that the pinned llama-cpp-python sdist vendors (the
commit of build b11312, the tag the operator pins the image to). Each case starts with exactly the
rendered arguments and environment (model path, listen address and port mapped to this machine),
becomes ready through the rendered readiness path, and answers a chat completion, streamed and
not, for the model name the gateway sends it; what it lists on /v1/models must agree with the
family module and with the gateway's catalog.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest

from roundhouse_api.families import FAMILIES
from roundhouse_api.families.llamacpp import BUILD, COMMIT
from roundhouse_gateway.engines.catalog import engine_from_resource
from tests.contract.cases import Case, all_cases
from tests.contract.conftest import ARTIFACTS, Record, need
from tests.support import engines

CASES = all_cases("llamacpp")
FAMILY = FAMILIES[CASES[0].engine.spec.engine]


def test_the_binary_is_the_pinned_build() -> None:
    out = subprocess.run([str(need("llama-server")), "--version"], capture_output=True, text=True)
    text = out.stdout + out.stderr
    assert f"(build {BUILD}, commit {COMMIT[:7]})" in text, text
    assert FAMILY.image is not None and FAMILY.image.endswith(f"-b{BUILD}")


def chat(url: str, model: str, stream: bool) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4, "stream": stream}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rendered_command_line_serves(case: Case, tiny_gguf: Path, record: Record) -> None:
    need("llama-server")
    proc = engines.llama_server(case.container, tiny_gguf, ARTIFACTS / "logs", name=f"llama-{case.id}")
    entry = {"case": case.id, "args": case.container["args"], "accepted": False}
    try:
        try:
            proc.start(timeout=60)
        except RuntimeError as err:
            entry["error"] = str(err)[-2000:]
            record.write("llamacpp", entry)
            pytest.fail(f"llama-server refused the rendered command line:\n{err}", pytrace=False)
        url = proc.url  # type: ignore[attr-defined]
        models = httpx.get(f"{url}/v1/models", timeout=10).json()
        listed = [m["id"] for m in models["data"]]
        entry |= {"accepted": True, "listed": listed}
        assert listed == FAMILY.listed_models(case.engine.spec)
        gateway_engine = engine_from_resource(case.engine, endpoints=[url])
        assert gateway_engine.upstream_model in listed
        plain = chat(url, gateway_engine.upstream_model, stream=False)
        assert plain.status_code == 200, plain.text
        answer = plain.json()
        assert answer["object"] == "chat.completion" and answer["usage"]["completion_tokens"] >= 1
        with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=60,
                          json={"model": gateway_engine.upstream_model, "max_tokens": 4, "stream": True,
                                "messages": [{"role": "user", "content": "hello"}]}) as r:  # fmt: skip
            assert r.status_code == 200
            lines = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        assert json.loads(lines[0][6:])["object"] == "chat.completion.chunk"
        # The context one request may use, as the operator reports it in status.
        per_request = FAMILY.context_per_request(case.engine.spec)
        slot_ctx = models["data"][0]["meta"]["n_ctx"]
        entry["slot_n_ctx"] = slot_ctx
        if per_request is not None:
            assert slot_ctx == per_request
        record.write("llamacpp", entry)
    finally:
        proc.stop()

"""The simulator image stands in for each engine's own command line exactly as the operator renders it."""

from __future__ import annotations

import pytest

from roundhouse_api import InferenceEngine
from roundhouse_operator.render import render
from tests.support.enginesim import shim
from tests.support.manifests import engine


def rendered_args(**spec: object) -> list[str]:
    doc = engine(**spec)
    doc["metadata"] = {"name": "e", "namespace": "n", "uid": "u"}
    c = render(InferenceEngine.model_validate(doc), 1)[-2]["spec"]["template"]["spec"]["containers"][0]
    return [*c["command"][1:], *c.get("args", [])]


def test_vllm_command_line() -> None:
    argv = rendered_args(model={"source": "org/m", "servedName": "m", "aliases": ["alias"]})
    assert shim("vllm", argv) == ["--flavour", "vllm", "--host", "0.0.0.0", "--port", "8000",
                                  "--model", "m", "--model", "alias"]  # fmt: skip


def test_llama_server_command_line() -> None:
    argv = rendered_args(engine="llamacpp", model={"source": "/m/x.gguf", "servedName": "x", "aliases": ["y"]})
    assert shim("llamacpp", argv) == ["--flavour", "llamacpp", "--host", "0.0.0.0", "--port", "8080",
                                      "--model", "x", "--model", "y"]  # fmt: skip


def test_ollama_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "0.0.0.0:11434")
    assert shim("ollama", ["serve"]) == ["--flavour", "ollama", "--host", "0.0.0.0", "--port", "11434"]
    assert shim("ollama", ["show", "m"]) == 1  # nothing listens here: not ready

"""Gateway pure parts: request parsing and error mapping, circuit breaker, probe verdicts, SSE usage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from roundhouse_api import Family
from roundhouse_gateway.engines.catalog import Engine
from roundhouse_gateway.engines.health import Health, probe_ok
from roundhouse_gateway.http.wire import ClientError, error_body
from roundhouse_gateway.request.read import parse_request
from roundhouse_gateway.request.sse import last_usage_event


def scope(**headers: str) -> dict[str, Any]:
    return {"headers": [(k.lower().replace("_", "-").encode(), v.encode()) for k, v in headers.items()]}


def parse(body: Any, kind: str = "chat", **headers: str) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_request(raw, kind, scope(**headers))


MSG = [{"role": "user", "content": "x" * 400}]

BAD = [
    ("not-json", b"{", "chat", 400, "invalid_json", None),
    ("not-object", [1], "chat", 400, "invalid_json", None),
    ("no-model", {"messages": MSG}, "chat", 400, "missing_model", "model"),
    ("model-not-string", {"model": 3, "messages": MSG}, "chat", 400, "missing_model", "model"),
    ("messages-not-list", {"model": "m", "messages": "hi"}, "chat", 400, "invalid_messages", "messages"),
    ("no-prompt", {"model": "m"}, "completions", 400, "missing_prompt", "prompt"),
    ("no-input", {"model": "m"}, "embeddings", 400, "missing_input", "input"),
    ("embeddings-stream", {"model": "m", "input": "x", "stream": True}, "embeddings", 400, "invalid_stream", "stream"),
    ("engine-not-string", {"model": "m", "messages": MSG, "engine": 5}, "chat", 400, "invalid_engine", "engine"),
    ("negative-max-tokens", {"model": "m", "messages": MSG, "max_tokens": -1}, "chat", 400, "invalid_value",
     "max_tokens"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "kind", "status", "code", "param"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_requests_become_openai_4xx(body: Any, kind: str, status: int, code: str, param: str | None) -> None:
    with pytest.raises(ClientError) as err:
        parse(body, kind)
    assert (err.value.status, err.value.code, err.value.param) == (status, code, param)
    shaped = json.loads(error_body(err.value.message, err.value.type, err.value.code, err.value.param))
    assert set(shaped["error"]) == {"message", "type", "param", "code"}


def test_features_are_parsed_once_and_engine_is_stripped() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    request = {"model": "m", "messages": MSG, "stream": True, "tools": tools, "max_tokens": 50, "engine": "gguf",
               "response_format": {"type": "json_schema"}}  # fmt: skip
    body, f, rewritten = parse(request, x_roundhouse_task="chat")
    assert (f.model, f.stream, f.tools, f.json_schema, f.max_tokens, f.override, f.task) == (
        "m", True, True, True, 50, "gguf", "chat")  # fmt: skip
    assert f.prompt_tokens == 100
    assert "engine" not in body and rewritten
    _, f2, rewritten2 = parse({"model": "m", "messages": MSG}, x_roundhouse_engine="vllm")
    assert f2.override == "vllm" and not rewritten2


def test_circuit_opens_after_failures_then_half_opens_for_one_trial() -> None:
    now = [0.0]
    h = Health(failures_to_open=3, cooldown=10, clock=lambda: now[0])
    ep = "http://e"
    for _ in range(2):
        h.failure(ep, "HTTP 500")
    assert h.healthy(ep) and h.state(ep) == "ok"
    h.failure(ep, "HTTP 500")
    assert not h.healthy(ep) and h.state(ep) == "open"
    now[0] = 10.5
    assert h.healthy(ep) and h.state(ep) == "half-open"
    h.attempt(ep)
    assert not h.healthy(ep)  # only one trial at a time
    h.failure(ep, "HTTP 500")
    assert h.state(ep) == "open"
    now[0] = 21
    h.attempt(ep)
    h.success(ep)
    assert h.healthy(ep) and h.state(ep) == "ok"


def test_failed_probe_marks_down_until_a_probe_succeeds() -> None:
    h = Health()
    h.probed("http://e", False, "Loading model")
    assert not h.healthy("http://e") and h.state("http://e") == "down"
    h.probed("http://e", True)
    assert h.healthy("http://e")


def engine(family: Family, model: str = "llama3.1:8b") -> Engine:
    return Engine("e", family, frozenset([model]), ("http://e",), model)


@pytest.mark.parametrize(
    ("family", "status", "body", "ok"),
    [
        (Family.LLAMACPP, 503, b'{"error":{"code":503,"message":"Loading model"}}', False),
        (Family.LLAMACPP, 200, b'{"status":"ok"}', True),
        (Family.VLLM, 200, b"", True),
        (Family.OLLAMA, 200, b'{"models":[]}', False),
        (Family.OLLAMA, 200, b'{"models":[{"name":"llama3.1:8b"}]}', True),
        (Family.OLLAMA, 200, b'{"models":[{"name":"llama3.1:70b"}]}', False),
        (Family.EXTERNAL, 401, b"", False),
    ],
)
def test_probe_verdicts(family: Family, status: int, body: bytes, ok: bool) -> None:
    assert probe_ok(engine(family), status, body)[0] is ok


def test_ollama_tag_without_version_means_latest() -> None:
    assert probe_ok(engine(Family.OLLAMA, "qwen2.5"), 200, b'{"models":[{"name":"qwen2.5:latest"}]}')[0]


def test_usage_is_found_in_the_last_sse_event() -> None:
    chunk = (b'data: {"choices":[{"delta":{}}]}\n\n'
             b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}\n\ndata: [DONE]\n\n')  # fmt: skip
    assert json.loads(last_usage_event(chunk))["usage"]["completion_tokens"] == 4


def test_endpointslices_give_one_url_per_ready_address() -> None:
    from roundhouse_gateway.sources.cluster import slice_endpoints

    slices = [
        {"ports": [{"name": "metrics", "port": 9000}, {"name": "http", "port": 8000}],
         "endpoints": [{"addresses": ["10.1.0.5"], "conditions": {"ready": True}},
                       {"addresses": ["10.1.0.6"], "conditions": {"ready": False}},
                       {"addresses": ["10.1.0.7"]}]},
        {"ports": [{"port": 8000}], "endpoints": [{"addresses": ["fd00::1"], "conditions": {"ready": True}}]},
        {"ports": [], "endpoints": [{"addresses": ["10.1.0.9"]}]},
    ]  # fmt: skip
    assert slice_endpoints(slices) == ["http://10.1.0.5:8000", "http://10.1.0.7:8000", "http://[fd00::1]:8000"]
    # Starting replicas: not ready and not terminating (a terminating pod never comes back).
    slices[0]["endpoints"].append({"addresses": ["10.1.0.8"], "conditions": {"ready": False, "terminating": True}})
    assert slice_endpoints(slices, starting=True) == ["http://10.1.0.6:8000"]


def test_an_engine_the_mode_selector_does_not_pick_always_runs(tmp_path: Path) -> None:
    """EngineMode spec.selector: engines without its labels are not switched off (the operator agreed;
    the gateway did not, and refused them as switched off)."""
    from roundhouse_gateway.sources.config import load_catalog

    docs = [{"apiVersion": "roundhouse.dev/v1alpha1", "kind": "EngineMode", "metadata": {"name": "default"},
             "spec": {"mode": "vllm", "selector": {"matchLabels": {"switch": "yes"}}}},
            {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine",
             "metadata": {"name": "l", "labels": {}},
             "spec": {"engine": "llamacpp", "model": {"source": "/m.gguf", "servedName": "t"}, "endpoints": ["http://x"]}},
            {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine",
             "metadata": {"name": "o", "labels": {"switch": "yes"}},
             "spec": {"engine": "ollama", "model": {"source": "q", "servedName": "q"},
                      "endpoints": ["http://y"]}}]  # fmt: skip
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    catalog = load_catalog(path)
    assert catalog.mode.active(catalog.by_name("l"))  # type: ignore[arg-type]
    assert not catalog.mode.active(catalog.by_name("o"))  # type: ignore[arg-type]
    assert catalog.models() == ["t"]


def test_a_list_that_timed_out_is_told_from_other_failures() -> None:
    import urllib3

    from roundhouse_gateway.sources.cluster import _timed_out

    timeout = urllib3.exceptions.ReadTimeoutError(None, "/apis", "read timed out")
    assert _timed_out(timeout)
    assert _timed_out(urllib3.exceptions.MaxRetryError(None, "/apis", timeout))
    refused = urllib3.exceptions.NewConnectionError(None, "refused")
    assert not _timed_out(urllib3.exceptions.MaxRetryError(None, "/apis", refused))

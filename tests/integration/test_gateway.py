"""The real gateway process in front of engine simulators on loopback, driven by the official openai SDK."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.cluster import wait_until
from tests.support.gateway_stack import KEY, Stack

pytestmark = pytest.mark.integration
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "gateway"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path, ARTIFACTS)
    yield s
    s.stop()


def test_openai_sdk_end_to_end(stack: Stack) -> None:
    stack.sim("v", "vllm", ["m"])
    stack.start([{"name": "qwen", "engine": "vllm", "sims": ["v"]}])
    c = stack.client()
    chat = c.chat.completions.with_raw_response.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert chat.headers["x-roundhouse-engine"] == "qwen"
    assert chat.headers["x-roundhouse-route-reason"]
    assert chat.parse().choices[0].message.content.startswith("v-0")
    chunks = list(c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True,
                                            stream_options={"include_usage": True}, max_tokens=4))  # fmt: skip
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "v-0 v-1 v-2 v-3 " and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert c.completions.create(model="m", prompt="hello").choices[0].text.startswith("v-0")
    assert len(c.embeddings.create(model="m", input=["a", "b"]).data) == 2
    assert [m.id for m in c.models.list()] == ["m"]
    model = c.models.retrieve("m")  # GET /v1/models/{id}
    assert model.id == "m" and model.object == "model" and model.owned_by == "roundhouse"
    assert model.model_extra and model.model_extra["roundhouse"]["engines"][0]["name"] == "qwen"
    with pytest.raises(openai.NotFoundError) as missing:
        c.models.retrieve("no-such-model")
    assert missing.value.code == "model_not_found" and "`no-such-model` does not exist" in missing.value.message


def test_sdk_exceptions_for_errors(stack: Stack) -> None:
    stack.sim("v", "vllm", ["m"])
    stack.start([{"name": "qwen", "engine": "vllm", "sims": ["v"]}])
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.AuthenticationError) as e401:
        stack.client("wrong").chat.completions.create(model="m", messages=msgs)  # type: ignore[arg-type]
    assert e401.value.status_code == 401 and "API key" in e401.value.message
    with pytest.raises(openai.NotFoundError) as e404:
        stack.client().chat.completions.create(model="missing", messages=msgs)  # type: ignore[arg-type]
    assert e404.value.code == "model_not_found"
    # A client's unknown model names are counted, but never become metric series of their own.
    metrics = httpx.get(stack.url + "/metrics").text
    assert 'roundhouse_gateway_requests_total{engine="",family="",model="",status="404"} 1.0' in metrics
    assert "missing" not in metrics
    with pytest.raises(openai.BadRequestError) as e400:
        stack.client().chat.completions.create(model="m", messages="not a list")  # type: ignore[arg-type]
    assert e400.value.param == "messages"
    r = httpx.post(stack.url + "/v1/chat/completions", content=b"{not json", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(stack.url + "/v1/chat/completions", content=b"x" * (5 * 1024 * 1024),
                   headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"
    stack.sims["v"].kill()
    with pytest.raises(openai.InternalServerError) as e503:
        stack.client().chat.completions.create(model="m", messages=msgs)  # type: ignore[arg-type]
    assert e503.value.status_code == 503 and e503.value.response.headers["retry-after"]
    assert KEY not in (stack.gw.log_path.read_text() if stack.gw else "")


def test_an_engine_s_plain_text_error_reaches_the_client_as_openai_json(stack: Stack) -> None:
    # An engine without the path answers aiohttp's own plain-text "404: Not Found" (as an older
    # engine build would): the client still gets OpenAI's error JSON naming the engine and status.
    stack.sim("g", "llamacpp", ["m"])  # the simulator's llama.cpp flavour serves no /v1/score
    stack.start([{"name": "old-vllm", "engine": "vllm", "sims": ["g"]}])
    r = httpx.post(stack.url + "/v1/score", json={"model": "m", "text_1": "a", "text_2": "b"},
                   headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
    assert r.status_code == 404 and r.headers["content-type"] == "application/json", r.text
    assert r.headers["x-roundhouse-engine"] == "old-vllm"
    assert r.json()["error"] == {"message": "engine old-vllm answered HTTP 404: 404: Not Found",
                                 "type": "invalid_request_error", "param": None, "code": "engine_error"}  # fmt: skip


def test_failover_when_an_engine_is_killed_under_load(stack: Stack) -> None:
    # 100 ms per answer, 8 at a time: requests are in flight on `a` when it dies, so they must fail
    # over (at 20 ms a loaded machine could kill it between batches, the probe see it first).
    stack.sim("a", "vllm", ["m"], ttft_ms=100)
    stack.sim("b", "vllm", ["m"], ttft_ms=100)
    stack.start([{"name": "pool", "engine": "vllm", "sims": ["a", "b"]}])
    errors: list[str] = []
    served: list[str] = []

    async def load() -> None:
        async with openai.AsyncOpenAI(base_url=stack.url + "/v1", api_key=KEY, max_retries=0) as c:

            async def one() -> None:
                try:
                    r = await c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
                    served.append(r.choices[0].message.content or "")
                except openai.APIError as err:
                    errors.append(repr(err))

            for _ in range(30):
                await asyncio.gather(*(one() for _ in range(8)))

    killer = threading.Timer(0.5, stack.sims["a"].kill)
    killer.start()
    asyncio.run(load())
    assert errors == []
    assert len(served) == 240
    assert any(s.startswith("a-") for s in served) and served[-1].startswith("b-")
    metrics = httpx.get(stack.url + "/metrics").text
    assert 'roundhouse_gateway_failovers_total{engine="pool"' in metrics


def test_mid_stream_kill_ends_with_an_error_event(stack: Stack) -> None:
    stack.sim("v", "vllm", ["m"], drop_after=3, itl_ms=5)
    stack.start([{"name": "qwen", "engine": "vllm", "sims": ["v"]}])
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with stack.stream(body) as r:
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert r.status_code == 200
    assert len(events) == 5  # three chunks, the error, [DONE]
    assert json.loads(events[3][6:])["error"]["code"] == "upstream_stream_error"
    assert events[4] == "data: [DONE]"
    with pytest.raises(openai.APIError):
        list(stack.client().chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                                    stream=True))  # fmt: skip


def test_loading_llama_server_is_not_routed_until_ready(stack: Stack) -> None:
    stack.sim("warm", "llamacpp", ["m"])
    stack.sim("cold", "llamacpp", ["m"], loading=True)
    stack.start([{"name": "warm", "engine": "llamacpp", "source": "/m/a.gguf", "sims": ["warm"]},
                 {"name": "cold", "engine": "llamacpp", "source": "/m/a.gguf", "sims": ["cold"]}])  # fmt: skip
    c = stack.client()
    for _ in range(10):
        r = c.chat.completions.with_raw_response.create(model="m", messages=[{"role": "user", "content": "x"}])
        assert r.headers["x-roundhouse-engine"] == "warm"
    stack.knobs("cold", loading=False)

    def cold_serves() -> bool:
        r = c.chat.completions.with_raw_response.create(model="m", messages=[{"role": "user", "content": "x"}])
        return r.headers["x-roundhouse-engine"] == "cold"

    wait_until(cold_serves, 10, "the loaded engine to receive traffic")


def test_concurrency_cap_overflows_to_the_next_engine(stack: Stack) -> None:
    stack.sim("small", "vllm", ["m"], ttft_ms=400)
    stack.sim("big", "vllm", ["m"], ttft_ms=400)
    small = {"name": "small", "engine": "vllm", "sims": ["small"], "routing": {"maxConcurrency": 1, "priority": 5}}
    stack.start([small, {"name": "big", "engine": "vllm", "sims": ["big"]}])

    async def two() -> list[httpx.Response]:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=10) as h:
            body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
            first = asyncio.create_task(h.post(stack.url + "/v1/chat/completions", json=body))
            await asyncio.sleep(0.1)
            second = await h.post(stack.url + "/v1/chat/completions", json=body)
            return [await first, second]

    first, second = asyncio.run(two())
    assert first.headers["x-roundhouse-engine"] == "small"
    assert second.headers["x-roundhouse-engine"] == "big"
    assert "concurrency-overflow" in second.headers["x-roundhouse-route-reason"]


def test_context_tools_and_override_routing(stack: Stack) -> None:
    stack.sim("short", "ollama", ["m"])
    stack.sim("long", "vllm", ["m"])
    stack.start([{"name": "short", "engine": "ollama", "source": "m", "sims": ["short"],
                  "routing": {"contextLength": 2048}},
                 {"name": "long", "engine": "vllm", "sims": ["long"],
                  "routing": {"contextLength": 32768, "capabilities": ["tools"]}}], mode="auto")  # fmt: skip
    c = stack.client()

    def engine_for(**kw: Any) -> str:
        extra_headers = kw.pop("extra_headers", None)
        r = c.chat.completions.with_raw_response.create(model="m", extra_headers=extra_headers, **kw)
        return str(r.headers["x-roundhouse-engine"]) + " " + str(r.headers["x-roundhouse-route-reason"])

    long_prompt = [{"role": "user", "content": "word " * 4000}]
    assert engine_for(messages=long_prompt).startswith("long context:")
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model="m", messages=[{"role": "user", "content": "w" * 200_000}])
    assert err.value.code == "context_length_exceeded"
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert engine_for(messages=[{"role": "user", "content": "x"}], tools=tools).startswith("long capability:tools")
    msgs = [{"role": "user", "content": "x"}]
    assert engine_for(messages=msgs, extra_headers={"X-Roundhouse-Engine": "ollama"}).startswith("short override")
    assert engine_for(messages=msgs, extra_body={"engine": "long"}).startswith("long override:long")
    assert "engine" not in stack.knobs("long")["last_request"]


def test_mode_switch_holds_requests_until_the_family_is_up(stack: Stack) -> None:
    stack.sim("v", "vllm", ["m"])
    stack.sim("o", "ollama", ["m"], loading=True)  # pulling: /api/tags does not list the model yet
    stack.start([{"name": "v", "engine": "vllm", "sims": ["v"]},
                 {"name": "o", "engine": "ollama", "source": "m", "sims": ["o"]}], mode="vllm",
                switchPolicy={"duringSwitch": "hold", "maxHoldSeconds": 20})  # fmt: skip
    assert stack.admin("GET", "/admin/engine-mode").json()["mode"] == "vllm"
    r = stack.admin("PUT", "/admin/engine-mode", json={"mode": "ollama"})
    assert r.status_code == 200 and r.json()["mode"] == "ollama" and r.json()["previous"] == "vllm"
    started = time.monotonic()
    threading.Timer(1.5, lambda: stack.knobs("o", loading=False)).start()
    resp = stack.client().chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "x"}]
    )
    assert resp.headers["x-roundhouse-engine"] == "o"
    assert time.monotonic() - started >= 1.4  # it waited for Ollama rather than failing or using vLLM
    view = stack.admin("GET", "/admin/engine-mode").json()
    assert {k: view[k] for k in ("mode", "switching", "phase", "previous", "standalone", "health")} == {
        "mode": "ollama", "switching": False, "phase": "Ready", "previous": "vllm", "standalone": True,
        "health": {"vllm": "ok", "ollama": "ok"}}  # fmt: skip
    assert view["lastSwitchSeconds"] >= 1.4  # timed from the request to the first healthy Ollama answer
    assert view["families"]["ollama"]["engines"] == ["o"] and view["families"]["auto"]["engines"] == ["v", "o"]


def test_admin_api_needs_its_own_key_and_lists_engines(stack: Stack) -> None:
    stack.sim("v", "vllm", ["m"])
    stack.start([{"name": "qwen", "engine": "vllm", "sims": ["v"]}])
    assert httpx.get(stack.url + "/admin/engines", headers={"Authorization": f"Bearer {KEY}"}).status_code == 401
    stack.client().chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    engines = stack.admin("GET", "/admin/engines").json()["engines"]
    assert engines[0]["name"] == "qwen" and engines[0]["family"] == "vllm"
    assert engines[0]["endpoints"][0]["health"] == "ok" and engines[0]["ttftP50Seconds"] is not None
    bad = stack.admin("PUT", "/admin/engine-mode", json={"mode": "tgi"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "mode"


def test_stream_bytes_pass_through_including_llama_server_pings(stack: Stack) -> None:
    stack.sim("l", "llamacpp", ["m"], ttft_ms=120, ping_every_ms=30)
    stack.start([{"name": "l", "engine": "llamacpp", "source": "/m/a.gguf", "sims": ["l"]}])
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with stack.stream(body) as r:
        raw = b"".join(r.iter_raw())
    # A gateway that re-serialized events would drop SSE comments; these bytes are the engine's own.
    assert raw.startswith(b": ping\n\n") and raw.endswith(b"data: [DONE]\n\n")
    assert raw.count(b"data: ") == 4  # two tokens, the finish chunk, [DONE]
    chunks = list(stack.client().chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                                         stream=True, max_tokens=2))  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "l-0 l-1 "


def test_client_disconnect_cancels_the_upstream_request(stack: Stack) -> None:
    stack.sim("v", "vllm", ["m"], itl_ms=200, tokens=100)
    stack.start([{"name": "v", "engine": "vllm", "sims": ["v"]}])
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with stack.stream(body) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        assert stack.knobs("v")["running"] == 1
    # The full answer would take 20 s; the engine must be released as soon as the client leaves.
    wait_until(lambda: stack.knobs("v")["running"] == 0, 5, "the upstream request to be cancelled")


def test_a_stream_that_goes_silent_is_ended_after_the_idle_timeout(stack: Stack) -> None:
    stack.sim("v", "vllm", ["m"], itl_ms=6000, tokens=3)
    stack.start([{"name": "slow", "engine": "vllm", "sims": ["v"], "routing": {"timeouts": {"idleSeconds": 1}}}])
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    started = time.monotonic()
    with stack.stream(body) as r:
        raw = b"".join(r.iter_raw())
    took = time.monotonic() - started
    events = [line for line in raw.split(b"\n\n") if line]
    assert events[0].startswith(b'data: {"id"') and b"v-0" in events[0]  # the first token went through
    assert b"stopped mid-stream" in events[-2] and events[-1] == b"data: [DONE]"
    assert 1.0 <= took < 4.0, f"the silent stream was ended after {took:.1f}s, not about 1 s of silence"


def test_the_admin_page_is_served_without_keys_and_nothing_else_is(stack: Stack) -> None:
    stack.sim("v", "vllm", ["m"])
    stack.start([{"name": "qwen", "engine": "vllm", "sims": ["v"]}])
    for path in ("/", "/ui"):
        r = httpx.get(stack.url + path)
        assert r.status_code == 308 and r.headers["location"] == "/ui/"
    page = httpx.get(stack.url + "/", follow_redirects=True)
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert "<title>Roundhouse gateway</title>" in page.text  # the page itself holds no secret: no key needed
    assert "script-src 'self'" in page.headers["content-security-policy"]
    js = httpx.get(stack.url + "/ui/app.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    missing = httpx.get(stack.url + "/ui/../app.py")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    post = httpx.post(stack.url + "/ui/", content=b"x")
    assert post.status_code == 405 and post.json()["error"]["type"] == "invalid_request_error"

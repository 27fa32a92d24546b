"""Malformed and hostile requests against the real gateway process: each gets its documented 4xx in
OpenAI's shape (never a 5xx, a traceback or a dropped connection), the engine never sees them, and
the gateway keeps serving."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.bad_requests import BAD, MSG, Bad
from tests.support.gateway_stack import KEY, Stack

pytestmark = pytest.mark.integration
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "gateway-hostile"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("hostile"), ARTIFACTS)
    s.sim("v", "vllm", ["m"])
    s.start([{"name": "v", "engine": "vllm", "served": "m", "sims": ["v"]}])
    yield s
    s.stop()


def sim_requests(stack: Stack) -> int:
    return int(stack.knobs("v")["served"])


def assert_openai_error(r: httpx.Response, status: int) -> dict[str, object]:
    assert r.status_code == status, r.text[:500]
    error = r.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in r.text
    assert r.headers["x-request-id"]
    return error  # type: ignore[no-any-return]


@pytest.mark.parametrize("case", BAD, ids=[c.id for c in BAD])
def test_malformed_body_is_400_naming_the_field(stack: Stack, case: Bad) -> None:
    before = sim_requests(stack)
    r = httpx.post(stack.url + case.path, content=case.body, headers=AUTH, timeout=30)
    error = assert_openai_error(r, 400)
    assert (error["code"], error["param"]) == (case.code, case.param)
    assert sim_requests(stack) == before  # refused before routing: the engine never saw it


def raw_http(stack: Stack, request: bytes, timeout: float = 10) -> bytes:
    host, port = stack.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(request)
        chunks = []
        while True:
            try:
                data = s.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)


def test_http_level_abuse_gets_4xx(stack: Stack) -> None:
    url = stack.url
    # Wrong method, unknown path, no key, a wrong key, a body over the limit.
    assert_openai_error(httpx.get(url + "/v1/chat/completions", headers=AUTH), 405)
    assert_openai_error(httpx.post(url + "/v1/nothing", headers=AUTH, content=b"{}"), 404)
    assert_openai_error(httpx.post(url + "/v1/chat/completions", content=b"{}"), 401)
    assert_openai_error(httpx.post(url + "/v1/chat/completions", content=b"{}",
                                   headers={"Authorization": "Bearer nope"}), 401)  # fmt: skip
    big = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * (12 * 1024 * 1024)}]})
    assert_openai_error(httpx.post(url + "/v1/chat/completions", content=big, headers=AUTH, timeout=60), 413)
    # A header a megabyte long and a malformed request line: the HTTP server refuses them with a 4xx.
    huge = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n"
    assert raw_http(stack, huge).split(b" ", 2)[1].startswith(b"4")
    assert raw_http(stack, b"GARBAGE\r\n\r\n").split(b" ", 2)[1].startswith(b"4")
    # Odd but legal headers are ignored: a content type that is not JSON, a latin-1 request id.
    r = httpx.post(url + "/v1/chat/completions", headers={**AUTH, "Content-Type": "text/plain",
                                                           "X-Request-Id": "ok-\xe9".encode("latin-1")},
                   content=json.dumps({"model": "m", "messages": MSG}))  # fmt: skip
    assert r.status_code == 200


def test_a_slow_client_does_not_stall_others(stack: Stack) -> None:
    host, port = stack.url.removeprefix("http://").split(":")
    body = json.dumps({"model": "m", "messages": MSG}).encode()
    with socket.create_connection((host, int(port)), timeout=10) as slow:
        slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
                     b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:5])  # fmt: skip
        t0 = time.monotonic()
        r = httpx.post(stack.url + "/v1/chat/completions", headers=AUTH, content=body, timeout=10)
        assert r.status_code == 200 and time.monotonic() - t0 < 5
        slow.sendall(body[5:])  # the slow one finishes too
        assert slow.recv(16).startswith(b"HTTP/1.1 200")


def test_the_gateway_still_serves_after_the_abuse(stack: Stack) -> None:
    r = httpx.post(stack.url + "/v1/chat/completions", headers=AUTH, json={"model": "m", "messages": MSG})
    assert r.status_code == 200 and r.json()["choices"]


leaves = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=6)
json_like = st.recursive(
    leaves, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=12
)
NAMES = ["model", "messages", "tools", "stream", "n", "temperature", "stop", "response_format", "max_tokens", "prompt"]
fields = st.dictionaries(st.sampled_from([*NAMES, "input"]), json_like, max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])  # fmt: skip
@given(body=fields, path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]))
def test_fuzzed_bodies_never_get_a_5xx(stack: Stack, body: dict[str, object], path: str) -> None:
    # allow_nan: Python's json writes NaN/Infinity, which the gateway must refuse as invalid JSON.
    r = httpx.post(stack.url + path, headers=AUTH, content=json.dumps(body, allow_nan=True), timeout=30)
    assert r.status_code < 500, r.text[:300]

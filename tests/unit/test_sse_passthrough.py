"""Forwarder.stream(): upstream bytes reach the client unchanged; a broken stream ends OpenAI-style.

The upstream response is faked (a unit test may fake a boundary); the gateway code is real.
"""

from __future__ import annotations

import asyncio
from typing import Any

from roundhouse_api import Family
from roundhouse_gateway.app import Gateway
from roundhouse_gateway.engines.catalog import Engine
from roundhouse_gateway.engines.upstream import ReadError
from roundhouse_gateway.request import account
from roundhouse_gateway.request.account import Outcome
from roundhouse_gateway.routing.route import Candidate, Features
from roundhouse_gateway.settings import Settings

ENGINE = Engine("e", Family.VLLM, frozenset(["m"]), ("http://e",), "m")


class FakeResponse:
    def __init__(self, chunks: list[bytes], fail_after: bool = False) -> None:
        self.status = 200
        self.chunks, self.fail_after = list(chunks), fail_after

    def within(self, seconds: float | None) -> None:
        pass  # deadlines are the upstream client's (tests/unit/test_upstream.py)

    async def read_chunk(self) -> bytes:
        if self.chunks:
            return self.chunks.pop(0)
        if self.fail_after:
            raise ReadError("the engine closed the connection")
        return b""


def run(chunks: list[bytes], fail_after: bool = False) -> tuple[list[dict[str, Any]], Gateway]:
    gw = Gateway(Settings())
    sent: list[dict[str, Any]] = []

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    upstream: Any = FakeResponse(chunks, fail_after)
    headers = {"Content-Type": "text/event-stream"}
    cand, features = Candidate(ENGINE, "http://e"), Features("m", stream=True)
    result = asyncio.run(gw.forwarder.stream(send, upstream, headers, ENGINE, cand, features, 0.0, "rid", "r"))
    assert isinstance(result, Outcome)  # the answer went to the client
    account.record(result, features, None, gw.fleet.stats, "rid", 0.0)
    return sent, gw


EVENTS = [
    b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n',
    b'data: {"choices":[{"delta":{"con',  # an event split across reads
    b'tent":"b"}}]}\n\n: ping\n\n',
    b'data: {"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":5}}\n\ndata: [DONE]\n\n',
]


def body(sent: list[dict[str, Any]]) -> bytes:
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_bytes_pass_through_unchanged_and_usage_is_counted() -> None:
    sent, gw = run(EVENTS)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert body(sent) == b"".join(EVENTS)
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert [n for _, n in gw.fleet.stats["e"].tokens] == [5]
    assert gw.fleet.health.state("http://e") == "ok"


def test_a_stream_that_breaks_ends_with_an_error_event_and_done() -> None:
    sent, gw = run(EVENTS[:2], fail_after=True)
    data = body(sent)
    assert data.startswith(EVENTS[0] + EVENTS[1])
    tail = data[len(EVENTS[0] + EVENTS[1]) :]
    assert tail.startswith(b'data: {"error": {"message": "engine e stopped mid-stream"')
    assert tail.endswith(b"\n\ndata: [DONE]\n\n")
    assert gw.fleet.health.endpoints["http://e"].failures == 1


def test_a_stream_that_ends_without_done_is_also_closed_properly() -> None:
    sent, _ = run(EVENTS[:1])
    assert body(sent).endswith(b"data: [DONE]\n\n") and b"upstream_stream_error" in body(sent)

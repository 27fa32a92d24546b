"""Engine errors reach clients in OpenAI's shape, naming the engine and its status, keeping its words."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from roundhouse_api import Family
from roundhouse_gateway.app import Gateway
from roundhouse_gateway.engines.catalog import Engine
from roundhouse_gateway.request.account import Outcome
from roundhouse_gateway.request.engine_errors import TEXT_KEPT, engine_text, openai_error
from roundhouse_gateway.routing.route import Candidate, Features
from roundhouse_gateway.settings import Settings
from tests.unit.test_upstream import read_request, run, serve

__all__ = ["run"]  # the fixture


def shaped(status: int, content_type: str, body: bytes) -> dict[str, Any] | None:
    out = openai_error("ext", status, content_type, body)
    return None if out is None else json.loads(out)["error"]


@pytest.mark.parametrize(("status", "content_type", "body", "message", "kind"), [
    (404, "text/plain", b"404: Not Found", "engine ext answered HTTP 404: 404: Not Found", "invalid_request_error"),
    (502, "text/html", b"<html><head><title>502</title><style>p{}</style></head><body><h1>502 Bad Gateway</h1>"
                       b"<hr><p>nginx &amp; co</p></body></html>",
     "engine ext answered HTTP 502: 502 502 Bad Gateway nginx & co", "upstream_error"),
    (400, "application/json", b'{"object": "error", "message": "max_tokens is too large", "type": "BadRequestError"}',
     "engine ext answered HTTP 400: max_tokens is too large", "invalid_request_error"),
    (500, "application/json", b'{"error": "model \\"x\\" not found"}',
     'engine ext answered HTTP 500: model "x" not found', "upstream_error"),
    (422, "application/json", b'{"detail": [{"loc": ["body"], "msg": "field required"}]}',
     'engine ext answered HTTP 422: {"detail":[{"loc":["body"],"msg":"field required"}]}', "invalid_request_error"),
    (503, "text/plain", b"", "engine ext answered HTTP 503 with an empty body", "upstream_error"),
    (400, "application/json", b"{not json", "engine ext answered HTTP 400: {not json", "invalid_request_error"),
])  # fmt: skip
def test_an_error_that_is_not_openai_shaped_is_wrapped(status: int, content_type: str, body: bytes, message: str,
                                                       kind: str) -> None:  # fmt: skip
    assert shaped(status, content_type, body) == {"message": message, "type": kind, "param": None,
                                                  "code": "engine_error"}  # fmt: skip


def test_openai_shaped_errors_and_successes_pass_through_and_long_texts_are_cut() -> None:
    ok = b'{"error": {"message": "context too long", "type": "invalid_request_error", "code": 400}}'
    assert shaped(400, "application/json", ok) is None
    assert shaped(200, "text/plain", b"fine") is None
    long = shaped(500, "text/plain", b"x" * 5000)
    assert long is not None and len(long["message"]) == len("engine ext answered HTTP 500: ") + TEXT_KEPT
    assert engine_text("application/json", b'{"error": {"message": "inner"}}') == "inner"


def test_a_plain_text_404_from_an_engine_reaches_the_client_as_openai_json(run: Any) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n\r\n404: Not Found")
        await w.drain()
        w.close()

    async def main() -> list[dict[str, Any]]:
        server, url = await serve(handler)
        gw = Gateway(Settings())
        engine = Engine("old-engine", Family.LLAMACPP, frozenset(["m"]), (url,), "m")
        sent: list[dict[str, Any]] = []

        async def send(msg: dict[str, Any]) -> None:
            sent.append(msg)

        got = await gw.forwarder.try_one(
            send, "rid", Candidate(engine, url), b"{}", [], Features("m"), "/v1/rerank", 0.0, "r"
        )
        server.close()
        assert isinstance(got, Outcome)  # the answer went to the client
        return sent

    start, body = run(main())
    headers = dict(start["headers"])
    assert start["status"] == 404 and headers[b"content-type"] == b"application/json"
    assert json.loads(body["body"])["error"] == {"message": "engine old-engine answered HTTP 404: 404: Not Found",
                                                 "type": "invalid_request_error", "param": None,
                                                 "code": "engine_error"}  # fmt: skip

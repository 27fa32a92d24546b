"""The gateway's HTTP wire: ASGI types, request ids, bodies in, OpenAI-shaped errors and JSON out."""

from __future__ import annotations

import functools
import itertools
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class ClientError(Exception):
    """A request the client must fix: becomes an OpenAI-style 4xx."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 type_: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.type = status, message, code, param, type_
        self.headers = headers or {}


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()


_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count()


def next_request_id() -> str:
    """32 hex digits, unique across processes (random per process) and within one (a counter):
    uuid4() reads the OS's random source on every request."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFFFFFF:016x}"


def iso_time(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"


def header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return str(v.decode("latin-1"))
    return None


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ClientError(400, "client disconnected while sending the body", "disconnected")
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ClientError(413, f"request body is larger than {limit} bytes", "request_too_large")
        chunks.append(chunk)
        if not msg.get("more_body"):
            return b"".join(chunks)


async def cancel_on_disconnect(receive: Receive, leave: Callable[[], None]) -> None:
    """Call `leave` (which cancels the request's handler) when the client disconnects. The server also
    reports a disconnect once the response is complete; by then the handler has cancelled this watcher
    (no await in between)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    leave()


@functools.lru_cache(maxsize=256)
def wire_name(name: str) -> bytes:
    """`name` lower-cased and encoded, remembered (the gateway writes the same few names on every answer)."""
    return name.lower().encode("latin-1")


async def respond(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
    hs = [(wire_name(k), v.encode()) for k, v in headers.items()]
    if not any(k == b"content-type" for k, _ in hs):
        hs.append((b"content-type", b"application/json"))
    hs.append((b"content-length", b"%d" % len(body)))
    await send({"type": "http.response.start", "status": status, "headers": hs})
    await send({"type": "http.response.body", "body": body})


async def respond_json(send: Send, status: int, obj: Any) -> None:
    await respond(send, status, json.dumps(obj).encode(), {"Content-Type": "application/json"})

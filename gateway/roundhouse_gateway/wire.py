"""The gateway's HTTP wire: request ids, bodies in, OpenAI-shaped errors and JSON out, request parsing."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import shapes
from .affinity import prefix_key
from .catalog import Engine
from .routing import Features

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


async def cancel_on_disconnect(receive: Receive, handler: asyncio.Task[Any], left: asyncio.Event) -> None:
    """Cancel `handler` when the client disconnects. The server also reports a disconnect once the
    response is complete; by then `handler` has cancelled this watcher (no await in between)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    left.set()
    handler.cancel()


async def respond(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
    hs = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    if not any(k == b"content-type" for k, _ in hs):
        hs.append((b"content-type", b"application/json"))
    hs.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": hs})
    await send({"type": "http.response.body", "body": body})


async def respond_json(send: Send, status: int, obj: Any) -> None:
    await respond(send, status, json.dumps(obj).encode(), {"Content-Type": "application/json"})


def parse_request(raw: bytes, kind: str, scope: Scope) -> tuple[dict[str, Any], Features, bool]:
    """Parse the body once; return it, the routing features, and whether it must be re-serialized."""
    try:
        body = shapes.check(shapes.load(raw), kind)
    except shapes.ShapeError as err:
        raise ClientError(400, err.message, err.code, err.param) from None
    stream = body.get("stream") is True
    override = body.pop("engine", None)
    rewritten = override is not None
    override = header(scope, b"x-roundhouse-engine") or override
    if override is not None and not isinstance(override, str):
        raise ClientError(400, "engine must be a string naming an engine or a family", "invalid_engine", "engine")
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or 0
    fmt = body.get("response_format") or {}
    features = Features(
        model=body["model"], kind=kind, stream=stream, tools=bool(body.get("tools")),
        json_schema=isinstance(fmt, dict) and fmt.get("type") == "json_schema",
        prompt_tokens=_estimate_tokens(body, kind), max_tokens=max_tokens, override=override,
        prefix=prefix_key(body, kind), path=scope.get("path", ""),
        task=header(scope, b"x-roundhouse-task"),
    )  # fmt: skip
    return body, features, rewritten


def _estimate_tokens(body: dict[str, Any], kind: str) -> int:
    """About four characters a token: cheap, and close enough to choose a context window."""
    if kind == "chat":
        chars = 0
        for m in body.get("messages", []):
            content = m.get("content") if isinstance(m, dict) else None
            chars += len(content) if isinstance(content, str) else len(json.dumps(content or ""))
        return chars // 4
    value = body.get("prompt") if kind == "completions" else body.get("input")
    return len(value) // 4 if isinstance(value, str) else len(json.dumps(value or "")) // 4


def with_model(body: dict[str, Any], engine: Engine) -> bytes:
    return json.dumps({**body, "model": engine.upstream_model}).encode()


def last_usage_event(chunk: bytes) -> bytes:
    for line in reversed(chunk.split(b"\n")):
        if line.startswith(b"data: {") and b'"usage"' in line:
            return line[6:]
    return b"{}"


def usage_of(data: bytes) -> tuple[int, int]:
    """(prompt, completion) tokens of an answer's `usage`: the chat and completions names, or the
    Responses API's (input, output), also inside a stream's `response.completed` event."""
    try:
        obj = json.loads(data)
        usage = obj.get("usage") or (obj.get("response") or {}).get("usage") or {}
        prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
        completion = usage.get("completion_tokens", usage.get("output_tokens"))
        return int(prompt or 0), int(completion or 0)
    except (ValueError, AttributeError, TypeError):
        return 0, 0


def strip_usage(pending: bytes, chunk: bytes) -> tuple[bytes, bytes, bytes | None]:
    """For a stream whose usage the gateway asked for and the client did not: (the complete events to
    send, the partial event to keep for the next chunk, the usage event's JSON if one went by). A
    usage-only event is dropped; usage in an event that also has choices is taken out of it."""
    data = pending + chunk
    cut = data.rfind(b"\n\n")
    if cut < 0:
        return b"", data, None
    head, rest = data[: cut + 2], data[cut + 2 :]
    if b'"usage":{' not in head and b'"usage": {' not in head:
        return head, rest, None
    out, usage = [], None
    for event in head.split(b"\n\n"):
        if not event:
            continue
        if event.startswith(b"data: {") and (b'"usage":{' in event or b'"usage": {' in event):
            try:
                obj = json.loads(event[6:])
            except ValueError:
                obj = None
            if isinstance(obj, dict) and obj.get("usage"):
                usage = event[6:]
                if not obj.get("choices"):
                    continue
                obj.pop("usage")
                event = b"data: " + json.dumps(obj).encode()
        out.append(event + b"\n\n")
    return b"".join(out), rest, usage


# The Responses API ends a stream with one of these events, and no [DONE].
RESPONSE_ENDS = (b"response.completed", b"response.failed", b"response.incomplete")


def stream_ended(kind: str, tail: bytes, chunk: bytes) -> bool:
    """Whether a stream has sent its last event: [DONE], or a Responses API stream's final event."""
    if kind == "responses":
        return any(end in chunk for end in RESPONSE_ENDS)
    return b"data: [DONE]\n\n" in tail


def stream_error(kind: str, message: str) -> bytes:
    """The events that end a broken stream the way the client's SDK expects for that endpoint."""
    if kind == "responses":
        data = {"type": "error", "code": "upstream_stream_error", "message": message, "param": None}
        return b"event: error\ndata: " + json.dumps(data).encode() + b"\n\n"
    return b"data: " + error_body(message, "server_error", "upstream_stream_error") + b"\n\n" + b"data: [DONE]\n\n"

"""A streaming request that waits for its engine to start: SSE comments until the real stream.

Clients and proxies drop a connection that stays silent for long (often 60 s), and an engine can
take minutes to start. So the response starts at once as an event stream, with a comment line
`: waiting for <engine>` every KEEPALIVE_SECONDS (SSE parsers, the openai SDK's among them, skip
comments); then the engine's own stream follows. Whatever the engine answers that is not a stream
(an error) arrives as an OpenAI error event and `[DONE]`, since the status line has been sent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

KEEPALIVE_SECONDS = 3.0
Send = Callable[[dict[str, Any]], Awaitable[None]]
SSE_DONE = b"data: [DONE]\n\n"


def error_event(message: str, type_: str, code: str | None) -> bytes:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return b"data: " + json.dumps(body).encode() + b"\n\n" + SSE_DONE


class Prelude:
    """The response of one streaming request while it waits; `send` then carries the real answer."""

    def __init__(self, send: Send, headers: dict[str, str]) -> None:
        self._send = send
        self.headers = headers
        self.started = False
        self.last = 0.0
        self._status = 200
        self._sse = True
        self._buffer = b""

    async def waiting(self, engine: str) -> None:
        """Called while the request waits: starts the stream, then a comment every few seconds."""
        now = time.monotonic()
        if self.started and now - self.last < KEEPALIVE_SECONDS:
            return
        if not self.started:
            headers = {**self.headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            await self._send({"type": "http.response.start", "status": 200,
                              "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]})  # fmt: skip
            self.started = True
        self.last = now
        await self._send({"type": "http.response.body", "body": f": waiting for {engine}\n\n".encode(),
                          "more_body": True})  # fmt: skip

    async def fail(self, message: str, type_: str, code: str | None) -> None:
        await self._send({"type": "http.response.body", "body": error_event(message, type_, code), "more_body": False})

    async def send(self, message: dict[str, Any]) -> None:
        """ASGI send for the rest of the request: passes a stream through, turns anything else into an
        error event (the status line is gone already)."""
        if not self.started:
            await self._send(message)
            return
        if message["type"] == "http.response.start":
            self._status = int(message["status"])
            ctype = next((v for k, v in message.get("headers", []) if k == b"content-type"), b"")
            self._sse = self._status < 400 and b"text/event-stream" in ctype
            return
        if self._sse:
            await self._send(message)
            return
        self._buffer += message.get("body", b"")
        if message.get("more_body"):
            return
        try:
            err = json.loads(self._buffer).get("error") or {}
        except (ValueError, AttributeError):
            err = {}
        text = err.get("message") if isinstance(err, dict) else None
        await self.fail(str(text or f"the engine answered HTTP {self._status}"),
                        str(err.get("type") or "server_error") if isinstance(err, dict) else "server_error",
                        str(err.get("code")) if isinstance(err, dict) and err.get("code") else None)  # fmt: skip

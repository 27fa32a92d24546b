"""Stage one, read: the body read whole (bounded), parsed once and checked against the OpenAI shapes,
and the features routing needs taken from it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from roundhouse_gateway.http.wire import ClientError, Receive, Scope, header, read_body
from roundhouse_gateway.request import shapes
from roundhouse_gateway.routing.affinity import prefix_key
from roundhouse_gateway.routing.route import Features


@dataclass(frozen=True)
class Request:
    """One OpenAI request as read: the client's bytes, the parsed body, what routing needs, and whether
    the body must be serialized again before it is forwarded (the client's bytes go as they are if not)."""

    raw: bytes
    body: dict[str, Any]
    features: Features
    rewritten: bool
    strip_usage: bool = False  # the gateway asked the engine for a usage chunk the client did not want

    @property
    def forwardable(self) -> bytes | None:
        """The client's own bytes, when they may be forwarded unchanged."""
        return None if self.rewritten else self.raw


async def read(scope: Scope, receive: Receive, kind: str, limit: int, user: str | None = None) -> Request:
    """The request of `kind` (a shapes.KINDS name) on this connection; ClientError if it is not one.
    `user`: who it is for when the body does not say (A/B arms stick to it)."""
    raw = await read_body(receive, limit)
    body, features, rewritten = parse_request(raw, kind, scope, user)
    return Request(raw, body, features, rewritten)


def parse_request(
    raw: bytes, kind: str, scope: Scope, user: str | None = None
) -> tuple[dict[str, Any], Features, bool]:
    """Parse the body once; return it, the routing features, and whether it must be re-serialized.
    `user` is who the request is for when its body does not say (the key's name)."""
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
        task=header(scope, b"x-roundhouse-task"), user=given if isinstance(given := body.get("user"), str) else user,
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

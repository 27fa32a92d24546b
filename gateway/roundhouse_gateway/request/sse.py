"""What the gateway reads in and writes into an engine's answer: its usage, a stream's end, the usage
chunk the client did not ask for, and the events that end a broken stream."""

from __future__ import annotations

import json

import orjson

from roundhouse_gateway.http.wire import error_body


def last_usage_event(chunk: bytes) -> bytes:
    for line in reversed(chunk.split(b"\n")):
        if line.startswith(b"data: {") and b'"usage"' in line:
            return line[6:]
    return b"{}"


def usage_of(data: bytes) -> tuple[int, int]:
    """(prompt, completion) tokens of an answer's `usage`: the chat and completions names, or the
    Responses API's (input, output), also inside a stream's `response.completed` event."""
    try:
        obj = orjson.loads(data)
        usage = obj.get("usage") or (obj.get("response") or {}).get("usage") or {}
        prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
        completion = usage.get("completion_tokens", usage.get("output_tokens"))
        return int(prompt or 0), int(completion or 0)
    except (ValueError, AttributeError, TypeError):  # orjson.JSONDecodeError is a ValueError
        return 0, 0


def strip_usage(pending: bytes, chunk: bytes) -> tuple[bytes, bytes, bytes | None]:
    """For a stream whose usage the gateway asked for and the client did not: (the complete events to
    send, the partial event to keep for the next chunk, the usage event's JSON if one went by). A
    usage-only event is dropped; usage in an event that also has choices is taken out of it."""
    if not pending and chunk.endswith(b"\n\n") and b'"usage"' not in chunk:  # most chunks: whole events, no usage
        return chunk, b"", None
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

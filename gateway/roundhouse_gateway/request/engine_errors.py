"""An engine's error answer in OpenAI's shape. Pure.

Engines answer most errors as OpenAI does (`{"error": {"message", "type", ...}}`), and those pass
through unchanged. Some do not: a plain-text `404: Not Found` from an engine without that path, an
HTML 502 from a proxy in front of an external API, vLLM's older `{"object": "error", "message"}`,
Ollama's native `{"error": "..."}`. Those reach the client as OpenAI's error JSON that names the
engine and its status, with the engine's own text kept in the message.
"""

from __future__ import annotations

import html
import json
import re

from roundhouse_gateway.http.wire import error_body

TEXT_KEPT = 500  # characters of the engine's own text kept in the message
TAGS = re.compile(r"<(script|style)\b.*?</\1>|<[^>]+>", re.DOTALL | re.IGNORECASE)


def openai_error(engine: str, status: int, content_type: str, data: bytes) -> bytes | None:
    """The body to send instead of an engine's error answer `data`, or None when it is already
    OpenAI's shape (or not an error)."""
    if status < 400:
        return None
    parsed: object = None
    if data.lstrip()[:1] in (b"{", b"["):
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict) and "message" in parsed["error"]:
        return None
    text = engine_text(content_type, data, parsed)
    kind = "invalid_request_error" if status < 500 else "upstream_error"
    message = f"engine {engine} answered HTTP {status}" + (f": {text}" if text else " with an empty body")
    return error_body(message, kind, "engine_error")


def engine_text(content_type: str, data: bytes, parsed: object = None) -> str:
    """The engine's own words: a JSON error's message, else the body as text (HTML without its tags)."""
    if parsed is None and data.lstrip()[:1] == b"{":
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        parsed = parsed["error"]
    if isinstance(parsed, dict):
        for key in ("message", "error", "detail"):
            value = parsed.get(key)
            if isinstance(value, str) and value.strip():
                return _short(value)
        return _short(json.dumps(parsed, separators=(",", ":")))
    text = data.decode(errors="replace")
    if "html" in content_type.lower() or text.lstrip()[:1] == "<":
        text = html.unescape(TAGS.sub(" ", text))
    return _short(text)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= TEXT_KEPT else text[: TEXT_KEPT - 1] + "…"

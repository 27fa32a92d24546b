"""How alike two answers to the same request are. Pure.

An answer's text is read from what the engine sent (a whole JSON answer, or an SSE stream's deltas);
`exact` compares the texts with whitespace runs folded, `similarity` is difflib's ratio over the words
(1.0 for identical, 0.0 for nothing in common), bounded to MAX_WORDS words so a long answer costs a
bounded time.
"""

from __future__ import annotations

import difflib
from typing import Any

import orjson

MAX_WORDS = 1000


def _text_of(obj: Any) -> str | None:
    """The answer text of one chat or completions object (or stream chunk)."""
    if not isinstance(obj, dict):
        return None
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    first = choices[0]
    for part in (first.get("message"), first.get("delta")):
        if isinstance(part, dict) and isinstance(part.get("content"), str):
            return str(part["content"])
    return first["text"] if isinstance(first.get("text"), str) else None


def answer_text(data: bytes) -> str | None:
    """The text of an answer: a JSON body, or an SSE stream whose `data:` events are joined."""
    data = data.strip()
    if not data:
        return None
    if data.startswith(b"{"):
        try:
            return _text_of(orjson.loads(data))
        except orjson.JSONDecodeError:
            return None
    parts = []
    for line in data.split(b"\n"):
        if line.startswith(b"data: {"):
            try:
                piece = _text_of(orjson.loads(line[6:]))
            except orjson.JSONDecodeError:
                continue
            if piece:
                parts.append(piece)
    return "".join(parts) if parts else None


def agreement(a: str, b: str) -> tuple[bool, float]:
    """(exact match, similarity in [0, 1]) of two answers."""
    wa, wb = a.split(), b.split()
    if wa == wb:
        return True, 1.0
    if not wa or not wb:
        return False, 0.0
    return False, round(difflib.SequenceMatcher(None, wa[:MAX_WORDS], wb[:MAX_WORDS], autojunk=False).ratio(), 4)

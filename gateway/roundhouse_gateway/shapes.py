"""Request shapes, checked before routing: what the OpenAI API defines for each endpoint's fields.

A body that is not what the API says is refused here with a 400 naming the field (`param`), so no
engine family gets a body it would answer differently (or not at all). Pure and cheap: one pass
over the fields a request carries, no copies.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 64  # no OpenAI request nests deeper than a handful of levels
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
INT_LIMIT = 2**31 - 1


class ShapeError(ValueError):
    """A field has the wrong type or value: `param` names it, as OpenAI's errors do."""

    def __init__(self, message: str, param: str | None, code: str = "invalid_type") -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def _no_constant(name: str) -> Any:
    raise ShapeError(f"request body contains {name}, which JSON does not allow", None, "invalid_json")


def load(raw: bytes) -> Any:
    """Parse a body: invalid UTF-8, NaN/Infinity and nesting deeper than MAX_DEPTH are refused."""
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except ShapeError:
        raise
    except RecursionError:
        raise ShapeError(f"request body is nested deeper than {MAX_DEPTH} levels", None, "invalid_json") from None
    except UnicodeDecodeError:
        raise ShapeError("request body is not valid UTF-8", None, "invalid_json") from None
    except ValueError as err:
        raise ShapeError(f"request body is not valid JSON: {err}", None, "invalid_json") from None
    if _depth_exceeds(body, MAX_DEPTH):
        raise ShapeError(f"request body is nested deeper than {MAX_DEPTH} levels", None, "invalid_json")
    return body


def _depth_exceeds(obj: Any, limit: int) -> bool:
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in value.values() if isinstance(v, dict | list))
        elif isinstance(value, list):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in value if isinstance(v, dict | list))
    return False


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _fail(param: str, want: str, value: Any) -> ShapeError:
    return ShapeError(f"{param} must be {want}, not {_kind(value)}", param)


def _number(body: dict[str, Any], name: str, low: float, high: float, integer: bool = False) -> None:
    value = body.get(name)
    if value is None:
        return
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type:
        raise _fail(name, "an integer" if integer else "a number", value)
    if not math.isfinite(value) or not low <= value <= high:
        raise ShapeError(f"{name} must be between {low:g} and {high:g}, not {value!r}", name, "invalid_value")


def _typed(body: dict[str, Any], name: str, types: type | tuple[type, ...], want: str) -> None:
    value = body.get(name)
    if value is not None and (isinstance(value, bool) != (types is bool) or not isinstance(value, types)):
        raise _fail(name, want, value)


def _strings(value: Any, param: str, want: str) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(param, want, value)


def check_common(body: dict[str, Any]) -> None:
    """Sampling and streaming fields every completion endpoint shares."""
    _typed(body, "stream", bool, "a boolean")
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise _fail("stream_options", "an object", options)
        _typed(options, "include_usage", bool, "a boolean")
    _number(body, "n", 1, 128, integer=True)
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _number(body, "presence_penalty", -2, 2)
    _number(body, "frequency_penalty", -2, 2)
    _number(body, "max_tokens", 0, INT_LIMIT, integer=True)
    _number(body, "max_completion_tokens", 0, INT_LIMIT, integer=True)
    _number(body, "seed", -(2**63), 2**63 - 1, integer=True)
    _number(body, "top_logprobs", 0, 20, integer=True)
    _typed(body, "user", str, "a string")
    stop = body.get("stop")
    if stop is not None:
        _strings(stop, "stop", "a string or an array of strings")
    bias = body.get("logit_bias")
    if bias is not None and (
        not isinstance(bias, dict)
        or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in bias.values())
    ):
        raise _fail("logit_bias", "an object mapping token ids to numbers", bias)


def _content(content: Any, param: str) -> None:
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _fail(param, "a string or an array of content parts", content)
    for i, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise ShapeError(f"{param}[{i}] must be an object with a string type", f"{param}[{i}]")


def check_chat(body: dict[str, Any]) -> None:
    """/v1/chat/completions: messages, tools, tool_choice, response_format and the common fields."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ShapeError("messages must be a non-empty array of messages", "messages", "invalid_messages")
    for i, m in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _fail(param, "an object", m)
        role = m.get("role")
        if not isinstance(role, str):
            raise _fail(f"{param}.role", "a string", role)
        if role not in ROLES:
            raise ShapeError(f"{param}.role must be one of {sorted(ROLES)}, not {role!r}", f"{param}.role",
                             "invalid_value")  # fmt: skip
        _content(m.get("content"), f"{param}.content")
        if "name" in m and not isinstance(m["name"], str):
            raise _fail(f"{param}.name", "a string", m["name"])
        calls = m.get("tool_calls")
        if calls is not None and (not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls)):
            raise _fail(f"{param}.tool_calls", "an array of objects", calls)
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _fail("tools", "an array of tools", tools)
        for i, t in enumerate(tools):
            if not isinstance(t, dict) or not isinstance(t.get("type"), str):
                raise ShapeError(f"tools[{i}] must be an object with a string type", f"tools[{i}]")
            fn = t.get("function")
            if t["type"] == "function" and (not isinstance(fn, dict) or not isinstance(fn.get("name"), str)):
                raise ShapeError(f"tools[{i}].function must be an object with a string name", f"tools[{i}].function")
    choice = body.get("tool_choice")
    if choice is not None and not isinstance(choice, str | dict):
        raise _fail("tool_choice", "a string or an object", choice)
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str)):
        raise ShapeError("response_format must be an object with a string type", "response_format")
    _typed(body, "logprobs", bool, "a boolean")
    _typed(body, "parallel_tool_calls", bool, "a boolean")
    check_common(body)


def _prompt(value: Any, param: str) -> None:
    """A string, an array of strings, an array of token ids, or an array of arrays of token ids."""
    if isinstance(value, str):
        return
    if isinstance(value, list) and (
        all(isinstance(v, str) for v in value)
        or all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        or all(isinstance(v, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in v) for v in value)
    ):
        return
    raise _fail(param, "a string, an array of strings, or an array of token ids", value)


def check_completions(body: dict[str, Any]) -> None:
    if "prompt" not in body:
        raise ShapeError("prompt is required", "prompt", "missing_prompt")
    _prompt(body["prompt"], "prompt")
    _number(body, "logprobs", 0, 20, integer=True)
    _typed(body, "echo", bool, "a boolean")
    _typed(body, "suffix", str, "a string")
    check_common(body)


def check_embeddings(body: dict[str, Any]) -> None:
    if "input" not in body:
        raise ShapeError("input is required", "input", "missing_input")
    _prompt(body["input"], "input")
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        raise ShapeError("encoding_format must be 'float' or 'base64'", "encoding_format", "invalid_value")
    _number(body, "dimensions", 1, INT_LIMIT, integer=True)
    _typed(body, "user", str, "a string")
    _typed(body, "stream", bool, "a boolean")
    if body.get("stream") is True:
        raise ShapeError("embeddings do not stream", "stream", "invalid_stream")


CHECKS = {"chat": check_chat, "completions": check_completions, "embeddings": check_embeddings}


def check(body: Any, kind: str) -> dict[str, Any]:
    """The body as an object whose fields have the shapes the OpenAI API defines for `kind`."""
    if not isinstance(body, dict):
        raise ShapeError("request body must be a JSON object", None, "invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ShapeError("you must provide a model parameter", "model", "missing_model")
    CHECKS[kind](body)
    return body

"""Field specs: one small object per request field, which checks a value and describes it as JSON Schema.

shapes.KINDS lists them per endpoint; shapes.check() runs their value() on every request and
openapi.document() publishes their schema(), so what the gateway documents is what it enforces.
A refusal is a ShapeError naming the field (`param`), as OpenAI's errors do. The checks are plain
isinstance tests over the value the request carries: no copies, no coercion, no pydantic.

schema() describes a value that is present and not null; shapes.Kind makes optional fields nullable
(null reads as absent, as in the OpenAI API). Only keywords of JSON Schema 2020-12 are used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

INT_LIMIT = 2**31 - 1
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
Schema = dict[str, Any]
# Python's type of a JSON value: its JSON Schema type, and the words for it in an error.
JSON_TYPES: dict[type, tuple[str, str]] = {bool: ("boolean", "a boolean"), int: ("integer", "an integer"),
                                           float: ("number", "a number"), str: ("string", "a string"),
                                           list: ("array", "an array"), dict: ("object", "an object")}  # fmt: skip


class ShapeError(ValueError):
    """A field has the wrong type or value: `param` names it, as OpenAI's errors do."""

    def __init__(self, message: str, param: str | None, code: str = "invalid_type") -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def kind_of(value: Any) -> str:
    """What a JSON value is, in words, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def fail(param: str, want: str, value: Any) -> ShapeError:
    """The invalid_type error for `param`: what it must be, and what it was."""
    return ShapeError(f"{param} must be {want}, not {kind_of(value)}", param)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tagged(key: str) -> Schema:
    """An object whose `key` is a string."""
    return {"type": "object", "required": [key], "properties": {key: {"type": "string"}}}


@dataclass(frozen=True, slots=True)
class Field:
    """One top-level field of a request body."""

    name: str

    def check(self, body: dict[str, Any]) -> None:
        """Check the field of `body` as an optional one: absent or null passes."""
        value = body.get(self.name)
        if value is not None:
            self.value(value)

    def value(self, value: Any) -> None:
        """Refuse `value` (null included) unless it has this field's shape."""
        raise NotImplementedError

    def missing(self) -> ShapeError:
        """The error for a required field the body lacks."""
        return ShapeError(f"{self.name} is required", self.name, f"missing_{self.name}")

    def schema(self) -> Schema:
        """The JSON Schema of a value that value() accepts."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Model(Field):
    """The model name: a non-empty string, required by every kind."""

    name: str = "model"

    def value(self, value: Any) -> None:
        if not isinstance(value, str) or not value:
            raise self.missing()

    def missing(self) -> ShapeError:
        return ShapeError("you must provide a model parameter", self.name, "missing_model")

    def schema(self) -> Schema:
        return {"type": "string", "minLength": 1}


@dataclass(frozen=True, slots=True)
class Number(Field):
    """A number (or an integer) in [low, high]; the bounds are finite, so they refuse inf and NaN too."""

    low: float
    high: float
    integer: bool = False
    _types: type | tuple[type, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_types", int if self.integer else (int, float))

    def value(self, value: Any) -> None:
        ok_type = not isinstance(value, bool) and isinstance(value, self._types)
        if not ok_type:
            raise fail(self.name, "an integer" if self.integer else "a number", value)
        # Comparisons, not math.isfinite(): that converts an int, and one past 1e308 raises OverflowError.
        if not self.low <= value <= self.high:
            raise ShapeError(f"{self.name} must be between {self.low:g} and {self.high:g}, not {value!r}",
                             self.name, "invalid_value")  # fmt: skip

    def schema(self) -> Schema:
        return {"type": "integer" if self.integer else "number", "minimum": self.low, "maximum": self.high}


@dataclass(frozen=True, slots=True)
class Typed(Field):
    """A value of one of `types` (bool, str, dict or list); a boolean is never taken for a number."""

    types: type | tuple[type, ...]

    def value(self, value: Any) -> None:
        if isinstance(value, bool) != (self.types is bool) or not isinstance(value, self.types):
            raise fail(self.name, " or ".join(JSON_TYPES[t][1] for t in self._types()), value)

    def _types(self) -> tuple[type, ...]:
        return self.types if isinstance(self.types, tuple) else (self.types,)

    def schema(self) -> Schema:
        names = [JSON_TYPES[t][0] for t in self._types()]
        return {"type": names[0] if len(names) == 1 else names}


_INCLUDE_USAGE = Typed("include_usage", bool)  # stream_options' one field; its param names it alone, as before


@dataclass(frozen=True, slots=True)
class Unstreamed(Field):
    """`stream` on an endpoint that cannot stream: a boolean, and never true."""

    name: str = "stream"
    why: str = "this endpoint does not stream"

    def value(self, value: Any) -> None:
        if not isinstance(value, bool):
            raise fail(self.name, "a boolean", value)
        if value:
            raise ShapeError(self.why, self.name, "invalid_stream")

    def schema(self) -> Schema:
        return {"type": "boolean", "enum": [False], "description": self.why}


@dataclass(frozen=True, slots=True)
class Enum(Field):
    """One of a few strings."""

    values: tuple[str, ...]

    def value(self, value: Any) -> None:
        if value not in self.values:
            *head, last = (repr(v) for v in self.values)
            choices = f"{', '.join(head)} or {last}" if head else last
            raise ShapeError(f"{self.name} must be {choices}", self.name, "invalid_value")

    def schema(self) -> Schema:
        return {"type": "string", "enum": list(self.values)}


@dataclass(frozen=True, slots=True)
class Strings(Field):
    """A string or an array of strings."""

    def value(self, value: Any) -> None:
        if isinstance(value, str):
            return
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise fail(self.name, "a string or an array of strings", value)

    def schema(self) -> Schema:
        return {"type": ["string", "array"], "items": {"type": "string"}}


@dataclass(frozen=True, slots=True)
class StringArray(Field):
    """An array of strings, of at least `min_items`."""

    min_items: int = 0

    def value(self, value: Any) -> None:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise fail(self.name, "an array of strings", value)
        if len(value) < self.min_items:
            raise ShapeError(f"{self.name} must hold at least {self.min_items} strings, not {len(value)}",
                             self.name, "invalid_value")  # fmt: skip

    def schema(self) -> Schema:
        schema: Schema = {"type": "array", "items": {"type": "string"}}
        if self.min_items:
            schema["minItems"] = self.min_items
        return schema


@dataclass(frozen=True, slots=True)
class Integers(Field):
    """An array of integers (token ids)."""

    def value(self, value: Any) -> None:
        if not isinstance(value, list) or not all(_is_int(v) for v in value):
            raise fail(self.name, "an array of integers", value)

    def schema(self) -> Schema:
        return {"type": "array", "items": {"type": "integer"}}


@dataclass(frozen=True, slots=True)
class Prompt(Field):
    """A string, an array of strings, an array of token ids, or an array of arrays of token ids."""

    def value(self, value: Any) -> None:
        if isinstance(value, str):
            return
        if isinstance(value, list) and (
            all(isinstance(v, str) for v in value)
            or all(_is_int(v) for v in value)
            or all(isinstance(v, list) and all(_is_int(t) for t in v) for v in value)
        ):
            return
        raise fail(self.name, "a string, an array of strings, or an array of token ids", value)

    def schema(self) -> Schema:
        ints = {"type": "array", "items": {"type": "integer"}}
        return {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}, ints,
                          {"type": "array", "items": ints}]}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Messages(Field):
    """Chat messages: a non-empty array of objects with a known role, content, name and tool calls."""

    name: str = "messages"

    def value(self, value: Any) -> None:
        if not isinstance(value, list) or not value:
            raise self.missing()
        for i, m in enumerate(value):
            # The param strings are built only for an error: this loop runs for every message.
            if not isinstance(m, dict) or not isinstance(role := m.get("role"), str) or role not in ROLES:
                raise self._bad_role(f"{self.name}[{i}]", m)
            content = m.get("content")
            if content is not None and not isinstance(content, str):
                _content_parts(content, f"{self.name}[{i}].content")
            if "name" in m and not isinstance(m["name"], str):
                raise fail(f"{self.name}[{i}].name", "a string", m["name"])
            calls = m.get("tool_calls")
            if calls is not None and (not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls)):
                raise fail(f"{self.name}[{i}].tool_calls", "an array of objects", calls)

    @staticmethod
    def _bad_role(param: str, m: Any) -> ShapeError:
        if not isinstance(m, dict):
            return fail(param, "an object", m)
        role = m.get("role")
        if not isinstance(role, str):
            return fail(f"{param}.role", "a string", role)
        return ShapeError(f"{param}.role must be one of {sorted(ROLES)}, not {role!r}", f"{param}.role",
                          "invalid_value")  # fmt: skip

    def missing(self) -> ShapeError:
        return ShapeError(f"{self.name} must be a non-empty array of messages", self.name, "invalid_messages")

    def schema(self) -> Schema:
        message = {"type": "object", "required": ["role"], "properties": {
            "role": {"type": "string", "enum": sorted(ROLES)},
            "content": {"type": ["string", "array", "null"], "items": _tagged("type")},
            "name": {"type": "string"},
            "tool_calls": {"type": ["array", "null"], "items": {"type": "object"}}}}  # fmt: skip
        return {"type": "array", "minItems": 1, "items": message}


def _content_parts(content: Any, param: str) -> None:
    if not isinstance(content, list):
        raise fail(param, "a string or an array of content parts", content)
    for i, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise ShapeError(f"{param}[{i}] must be an object with a string type", f"{param}[{i}]")


@dataclass(frozen=True, slots=True)
class Tools(Field):
    """An array of tools, each an object with a string type; with `function_named` (chat), a
    function tool also carries `function: {name: string}` (the Responses API's are flat)."""

    name: str = "tools"
    function_named: bool = True

    def value(self, value: Any) -> None:
        if not isinstance(value, list):
            raise fail(self.name, "an array of tools", value)
        for i, t in enumerate(value):
            if not isinstance(t, dict) or not isinstance(t.get("type"), str):
                raise ShapeError(f"{self.name}[{i}] must be an object with a string type", f"{self.name}[{i}]")
            if not self.function_named or t["type"] != "function":
                continue
            fn = t.get("function")
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise ShapeError(f"{self.name}[{i}].function must be an object with a string name",
                                 f"{self.name}[{i}].function")  # fmt: skip

    def schema(self) -> Schema:
        tool = _tagged("type")
        if self.function_named:
            tool["if"] = {"properties": {"type": {"const": "function"}}}
            tool["then"] = {"required": ["function"], "properties": {"function": _tagged("name")}}
        return {"type": "array", "items": tool}


@dataclass(frozen=True, slots=True)
class Tagged(Field):
    """An object with a string `type` (response_format)."""

    def value(self, value: Any) -> None:
        if not isinstance(value, dict) or not isinstance(value.get("type"), str):
            raise ShapeError(f"{self.name} must be an object with a string type", self.name)

    def schema(self) -> Schema:
        return _tagged("type")


@dataclass(frozen=True, slots=True)
class StreamOptions(Field):
    """stream_options: an object whose include_usage, if set, is a boolean."""

    name: str = "stream_options"

    def value(self, value: Any) -> None:
        if not isinstance(value, dict):
            raise fail(self.name, "an object", value)
        _INCLUDE_USAGE.check(value)

    def schema(self) -> Schema:
        return {"type": "object", "properties": {"include_usage": {"type": ["boolean", "null"]}}}


@dataclass(frozen=True, slots=True)
class LogitBias(Field):
    """An object mapping token ids to finite numbers."""

    name: str = "logit_bias"

    def value(self, value: Any) -> None:
        if not isinstance(value, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and (isinstance(v, int) or math.isfinite(v))
            for v in value.values()
        ):
            raise fail(self.name, "an object mapping token ids to numbers", value)

    def schema(self) -> Schema:
        return {"type": "object", "additionalProperties": {"type": "number"}}


@dataclass(frozen=True, slots=True)
class InputItems(Field):
    """The Responses API's input: a string, or an array of items, each an object with a string
    `type` or a string `role` (a message may leave its type out)."""

    name: str = "input"

    def value(self, value: Any) -> None:
        if isinstance(value, str):
            return
        if not isinstance(value, list):
            raise fail(self.name, "a string or an array of input items", value)
        for i, item in enumerate(value):
            if not isinstance(item, dict) or not (
                isinstance(item.get("type"), str) or isinstance(item.get("role"), str)
            ):
                raise ShapeError(f"{self.name}[{i}] must be an object with a string type or role", f"{self.name}[{i}]")

    def schema(self) -> Schema:
        item = {"type": "object", "anyOf": [_tagged("type"), _tagged("role")]}
        return {"type": ["string", "array"], "items": item}

"""Request shapes, checked before routing: what the OpenAI API defines for each endpoint's fields.

A body that is not what the API says is refused here with a 400 naming the field (`param`), so no
engine family gets a body it would answer differently (or not at all). Each endpoint is a Kind: a
table of field specs (fields.py) that check() runs and openapi.document() publishes as JSON Schema,
so the two cannot drift apart. Pure and cheap: one pass over the fields a request carries, no copies.
Fields a table does not name pass untouched: engines take extensions.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from roundhouse_gateway.request.fields import (
    INT_LIMIT,
    ROLES,
    Enum,
    Field,
    InputItems,
    Integers,
    LogitBias,
    Messages,
    Model,
    Number,
    Prompt,
    Schema,
    ShapeError,
    StreamOptions,
    StringArray,
    Strings,
    Tagged,
    Tools,
    Typed,
    Unstreamed,
)

__all__ = ["INT_LIMIT", "KINDS", "MAX_DEPTH", "ROLES", "Kind", "ShapeError", "check", "load"]

_LONG_DIGITS = re.compile(rb"\d{19}")
MAX_DEPTH = 64  # no OpenAI request nests deeper than a handful of levels
_ABSENT = object()


def _no_constant(name: str) -> Any:
    raise ShapeError(f"request body contains {name}, which JSON does not allow", None, "invalid_json")


def load(raw: bytes) -> Any:
    """Parse a body: invalid UTF-8, NaN/Infinity and nesting deeper than MAX_DEPTH are refused."""
    # orjson parses a body in a fraction of json's time. It reads integers past 64 bits as floats, so a
    # body with a run of 19 digits goes to json; so does what orjson refuses (json accepts some of it,
    # UTF-16 say, and says precisely what is wrong with the rest).
    if _LONG_DIGITS.search(raw) is not None:
        body = _load_slowly(raw)
    else:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = _load_slowly(raw)
    # Nesting needs an opening bracket per level: a body with few of them cannot be too deep, and
    # counting bytes costs a fraction of walking the parsed body (a tenth of a request's CPU).
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _depth_exceeds(body, MAX_DEPTH):
        raise ShapeError(f"request body is nested deeper than {MAX_DEPTH} levels", None, "invalid_json")
    return body


def _load_slowly(raw: bytes) -> Any:
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except ShapeError:
        raise
    except RecursionError:
        raise ShapeError(f"request body is nested deeper than {MAX_DEPTH} levels", None, "invalid_json") from None
    except UnicodeDecodeError:
        raise ShapeError("request body is not valid UTF-8", None, "invalid_json") from None
    except ValueError as err:
        raise ShapeError(f"request body is not valid JSON: {err}", None, "invalid_json") from None


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


def nullable(schema: Schema) -> Schema:
    """`schema`, or null: an optional field sent as null reads as absent."""
    out = dict(schema)
    if "enum" in out:
        out["enum"] = [*out["enum"], None]
    kind = out.get("type")
    if isinstance(kind, str):
        out["type"] = [kind, "null"]
    elif isinstance(kind, list):
        out["type"] = [*kind, "null"]
    else:
        return {"anyOf": [schema, {"type": "null"}]}
    return out


@dataclass(frozen=True, slots=True)
class ExactlyOne:
    """A rule across fields: exactly one of `names` is set (present and not null)."""

    names: tuple[str, ...]

    def check(self, body: dict[str, Any]) -> None:
        """Refuse a body that sets none of `names`, or more than one."""
        given = [n for n in self.names if body.get(n) is not None]
        if not given:
            first = self.names[0]
            raise ShapeError(f"one of {' or '.join(self.names)} is required", first, f"missing_{first}")
        if len(given) > 1:
            raise ShapeError(f"send only one of {' or '.join(given)}", given[1], "invalid_value")

    def schema(self) -> Schema:
        return {"oneOf": [{"required": [n], "properties": {n: {"not": {"type": "null"}}}} for n in self.names]}


@dataclass(frozen=True)
class Kind:
    """One endpoint's request: its path, a summary for the docs, its fields, which are required,
    and rules across fields. Every kind requires `model` (the gateway routes by it)."""

    path: str
    summary: str
    fields: tuple[Field, ...]
    required: tuple[str, ...] = ()
    rules: tuple[ExactlyOne, ...] = ()
    _required: tuple[tuple[str, Field], ...] = field(init=False, repr=False)
    _optional: dict[str, Field] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        specs = (Model(), *self.fields)
        names = [f.name for f in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.path}: a field is listed twice")
        by_name = {f.name: f for f in specs}
        object.__setattr__(self, "fields", specs)
        object.__setattr__(self, "required", ("model", *self.required))
        object.__setattr__(self, "_required", tuple((n, by_name[n]) for n in self.required))
        object.__setattr__(self, "_optional", {n: f for n, f in by_name.items() if n not in self.required})

    @property
    def streams(self) -> bool:
        """Whether a request of this kind may ask for a server-sent event stream."""
        return any(isinstance(f, Typed) and f.name == "stream" for f in self.fields)

    def check(self, body: dict[str, Any]) -> None:
        """Refuse `body` (an object) unless every field a spec names has that spec's shape."""
        for name, spec in self._required:  # first, in table order: the model is always the first error
            value = body.get(name, _ABSENT)
            if value is _ABSENT:
                raise spec.missing()
            spec.value(value)
        # Then the optional fields the body carries, in its order: a lookup per field sent rather
        # than a probe per field known (a chat body sends a handful of the twenty it may).
        optional = self._optional
        for name, value in body.items():
            if value is not None:
                known = optional.get(name)
                if known is not None:
                    known.value(value)
        for rule in self.rules:
            rule.check(body)

    def schema(self) -> Schema:
        """The JSON Schema of a request body of this kind (fields it does not name are allowed)."""
        properties = {f.name: f.schema() if f.name in self.required else nullable(f.schema()) for f in self.fields}
        schema: Schema = {"type": "object", "required": list(self.required), "properties": properties,
                          "additionalProperties": True}  # fmt: skip
        if self.rules:
            schema["allOf"] = [rule.schema() for rule in self.rules]
        return schema


# Sampling and streaming fields every completion endpoint shares.
COMMON: tuple[Field, ...] = (
    Typed("stream", bool),
    StreamOptions(),
    Number("n", 1, 128, integer=True),
    Number("temperature", 0, 2),
    Number("top_p", 0, 1),
    Number("presence_penalty", -2, 2),
    Number("frequency_penalty", -2, 2),
    Number("max_tokens", 0, INT_LIMIT, integer=True),
    Number("max_completion_tokens", 0, INT_LIMIT, integer=True),
    Number("seed", -(2**63), 2**63 - 1, integer=True),
    Number("top_logprobs", 0, 20, integer=True),
    Typed("user", str),
    Strings("stop"),
    LogitBias(),
)

KINDS: dict[str, Kind] = {
    "chat": Kind(
        "/v1/chat/completions",
        "Create a chat completion",
        (
            Messages(),
            Tools(),
            Typed("tool_choice", (str, dict)),
            Tagged("response_format"),
            Typed("logprobs", bool),
            Typed("parallel_tool_calls", bool),
            *COMMON,
        ),
        required=("messages",),
    ),
    "completions": Kind(
        "/v1/completions",
        "Create a text completion",
        (Prompt("prompt"), Number("logprobs", 0, 20, integer=True), Typed("echo", bool), Typed("suffix", str), *COMMON),
        required=("prompt",),
    ),
    "embeddings": Kind(
        "/v1/embeddings",
        "Create embeddings",
        (
            Prompt("input"),
            Enum("encoding_format", ("float", "base64")),
            Number("dimensions", 1, INT_LIMIT, integer=True),
            Typed("user", str),
            Unstreamed(why="embeddings do not stream"),
        ),
        required=("input",),
    ),
    # The Responses API as vLLM, llama-server and Ollama take it (input, instructions,
    # max_output_tokens, store); its function tools are flat ({type, name, parameters}).
    "responses": Kind(
        "/v1/responses",
        "Create a model response (OpenAI Responses API)",
        (
            InputItems(),
            Typed("instructions", str),
            Typed("stream", bool),
            Number("max_output_tokens", 1, INT_LIMIT, integer=True),
            Number("temperature", 0, 2),
            Number("top_p", 0, 1),
            Tools(function_named=False),
            Typed("previous_response_id", str),
            Typed("store", bool),
            Typed("metadata", dict),
            Typed("user", str),
        ),
        required=("input",),
    ),
    # top_n from 1: vLLM reads 0 as "all" and llama-server cuts to top_n, so 0 would be answered
    # differently by each; leave it out for all of them.
    "rerank": Kind(
        "/v1/rerank",
        "Rank documents by relevance to a query",
        (
            Typed("query", str),
            StringArray("documents", min_items=1),
            Number("top_n", 1, INT_LIMIT, integer=True),
            Typed("return_documents", bool),
        ),
        required=("query", "documents"),
    ),
    "score": Kind(
        "/v1/score",
        "Score text pairs (text_1 against each text_2)",
        (Strings("text_1"), Strings("text_2")),
        required=("text_1", "text_2"),
    ),
    # vLLM's two tokenize requests: a prompt, or chat messages rendered by the model's template.
    "tokenize": Kind(
        "/tokenize",
        "Tokenize a prompt or chat messages",
        (
            Typed("prompt", str),
            Messages(),
            Typed("add_special_tokens", bool),
            Typed("add_generation_prompt", bool),
            Typed("return_token_strs", bool),
        ),
        rules=(ExactlyOne(("prompt", "messages")),),
    ),
    "detokenize": Kind("/detokenize", "Turn token ids back into text", (Integers("tokens"),), required=("tokens",)),
}


def check(body: Any, kind: str) -> dict[str, Any]:
    """The body as an object whose fields have the shapes the OpenAI API defines for `kind`."""
    if not isinstance(body, dict):
        raise ShapeError("request body must be a JSON object", None, "invalid_json")
    KINDS[kind].check(body)
    return body

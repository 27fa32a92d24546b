"""GET /openapi.json: a well-formed OpenAPI 3.1 document, built from the request checks, whose
request schemas say exactly what shapes.check() enforces: the same bodies pass both, field by field
(boundary values included) and for random bodies (hypothesis).

jsonschema is not a dependency, so `valid()` below evaluates the JSON Schema 2020-12 keywords the
generator emits (a test pins that set); where jsonschema is installed, it cross-checks both.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roundhouse_gateway.request import openapi, shapes
from roundhouse_gateway.request.fields import Enum, Field, Number, Schema, StringArray

DOC = openapi.document("1.2.3")
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
TYPES = {"null", "boolean", "integer", "number", "string", "array", "object"}
# Every keyword a request schema may use: valid() implements each one (and refuses any other).
KEYWORDS = {"type", "enum", "const", "minimum", "maximum", "minLength", "minItems", "items", "required", "properties",
            "additionalProperties", "anyOf", "oneOf", "allOf", "not", "if", "then", "description"}  # fmt: skip
SUBSCHEMA = {"items", "additionalProperties", "not", "if", "then"}


# --- a JSON Schema 2020-12 evaluator for the keywords above --------------------------------------
def json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer()):
        return "integer"  # as 2020-12 defines it: any number with a zero fractional part
    return {float: "number", str: "string", list: "array", dict: "object"}[type(v)]


def json_eq(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return type(a) is type(b) and a == b  # JSON's false is not 0
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_eq(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_eq(a[k], b[k]) for k in a)
    return bool(a == b) and isinstance(a, str) == isinstance(b, str)


def valid(s: Schema | bool, v: Any) -> bool:
    if isinstance(s, bool):
        return s
    number = json_type(v) in ("integer", "number")
    for key, arg in s.items():
        assert key in KEYWORDS | {"else"}, f"valid() does not implement {key}"
        ok = True
        if key == "type":
            ok = any(json_type(v) == t or (t == "number" and number) for t in ([arg] if isinstance(arg, str) else arg))
        elif key == "enum":
            ok = any(json_eq(v, e) for e in arg)
        elif key == "const":
            ok = json_eq(v, arg)
        elif key in ("minimum", "maximum") and number:
            ok = v >= arg if key == "minimum" else v <= arg
        elif (key == "minLength" and isinstance(v, str)) or (key == "minItems" and isinstance(v, list)):
            ok = len(v) >= arg
        elif key == "items" and isinstance(v, list):
            ok = all(valid(arg, x) for x in v)
        elif key == "required" and isinstance(v, dict):
            ok = all(k in v for k in arg)
        elif key == "properties" and isinstance(v, dict):
            ok = all(valid(sub, v[k]) for k, sub in arg.items() if k in v)
        elif key == "additionalProperties" and isinstance(v, dict):
            ok = all(valid(arg, x) for k, x in v.items() if k not in s.get("properties", {}))
        elif key in ("anyOf", "oneOf", "allOf"):
            passed = sum(valid(sub, v) for sub in arg)
            ok = passed >= 1 if key == "anyOf" else passed == 1 if key == "oneOf" else passed == len(arg)
        elif key == "not":
            ok = not valid(arg, v)
        elif key == "if":
            ok = valid(s.get("then", True), v) if valid(arg, v) else valid(s.get("else", True), v)
        if not ok:
            return False
    return True


def subschemas(s: Any) -> Iterator[Schema]:
    """`s` and every schema inside it."""
    if not isinstance(s, dict):
        return
    yield s
    for key, arg in s.items():
        if key in SUBSCHEMA:
            yield from subschemas(arg)
        elif key == "properties":
            for sub in arg.values():
                yield from subschemas(sub)
        elif key in ("anyOf", "oneOf", "allOf"):
            for sub in arg:
                yield from subschemas(sub)


def example(s: Schema) -> Any:
    """A small value `s` accepts: for an object, its required fields only (a oneOf's first branch's too)."""
    if "enum" in s:
        return s["enum"][0]
    kind = s.get("type")
    if kind is None:
        return example(s["anyOf"][0])
    kind = kind if isinstance(kind, str) else kind[0]
    if kind in ("integer", "number"):
        return s.get("minimum", 1)
    if kind == "array":
        return [example(s["items"])] * max(1, s.get("minItems", 0))
    if kind == "object":
        parts = [s, *s.get("anyOf", [])[:1], *(rule["oneOf"][0] for rule in s.get("allOf", []))]
        props = {k: p for part in reversed(parts) for k, p in part.get("properties", {}).items()}
        return {k: example(props[k]) for part in parts for k in part.get("required", [])}
    return {"string": "x" * max(1, s.get("minLength", 0)), "boolean": True}[kind]


def accepted(body: dict[str, Any], kind: str) -> bool:
    try:
        shapes.check(body, kind)
    except shapes.ShapeError:
        return False
    return True


# --- the document is OpenAPI 3.1 --------------------------------------------------------------
def refs(obj: Any) -> Iterator[str]:
    if isinstance(obj, dict):
        if "$ref" in obj:
            yield obj["$ref"]
        for v in obj.values():
            yield from refs(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from refs(v)


def resolve(obj: dict[str, Any]) -> Any:
    if "$ref" not in obj:
        return obj
    node: Any = DOC
    for part in obj["$ref"].removeprefix("#/").split("/"):
        node = node[part]
    return node


def operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in DOC["paths"].items():
        for method, op in item.items():
            yield path, method, op


def test_document_is_openapi_3_1() -> None:
    assert DOC["openapi"] == "3.1.0" and DOC["jsonSchemaDialect"] == "https://json-schema.org/draft/2020-12/schema"
    assert DOC["info"]["title"] and DOC["info"]["version"] == "1.2.3"
    assert json.loads(json.dumps(DOC)) == DOC  # plain JSON: no tuples, no sets
    assert list(DOC["paths"]) == sorted(DOC["paths"]) and all(p.startswith("/") for p in DOC["paths"])
    assert set(DOC["components"]) <= {"schemas", "responses", "parameters", "headers", "securitySchemes"}
    for name in (n for section in DOC["components"].values() for n in section):
        assert re.fullmatch(r"[A-Za-z0-9._-]+", name), name
    ids = [op["operationId"] for _, _, op in operations()]
    assert len(ids) == len(set(ids))
    for path, method, op in operations():
        assert method in METHODS and op["summary"] and op["responses"], (path, method)
        for status, response in op["responses"].items():
            assert re.fullmatch(r"[1-5]\d\d", status)
            response = resolve(response)
            assert response["description"]
            for media in response.get("content", {}).values():
                assert set(media) == {"schema"}
        templated = set(re.findall(r"{(\w+)}", path))
        params = {p["name"] for p in op.get("parameters", []) if p["in"] == "path" and p["required"]}
        assert templated == params, path
    for ref in refs(DOC):
        assert ref.startswith("#/components/") and resolve({"$ref": ref}) is not None, ref


def test_bearer_guards_the_api_and_the_tokenizer_only() -> None:
    assert DOC["components"]["securitySchemes"]["bearer"] | {"description": ""} == {
        "type": "http", "scheme": "bearer", "description": ""}  # fmt: skip
    for path, _, op in operations():
        guarded = path.startswith("/v1/") or path in ("/tokenize", "/detokenize")
        assert op.get("security") == ([{"bearer": []}] if guarded else None), path


def test_one_post_per_kind_with_its_schema_and_the_errors() -> None:
    posts = {path for path, method, _ in operations() if method == "post"}
    assert posts == {kind.path for kind in shapes.KINDS.values()}
    error = DOC["components"]["schemas"]["Error"]["properties"]["error"]
    assert error["required"] == ["message", "type", "param", "code"]
    for name, kind in shapes.KINDS.items():
        op = DOC["paths"][kind.path]["post"]
        schema = resolve(op["requestBody"]["content"]["application/json"]["schema"])
        assert op["requestBody"]["required"] and schema == kind.schema()
        assert schema["additionalProperties"] is True and schema["required"][0] == "model"
        assert {"200", "400", "401", "404", "429", "503"} <= set(op["responses"]), name
        for status in ("400", "401", "404", "429", "503"):
            content = resolve(op["responses"][status])["content"]["application/json"]
            assert content["schema"] == {"$ref": "#/components/schemas/Error"}
        assert ("text/event-stream" in op["responses"]["200"]["content"]) == kind.streams


def test_get_operations() -> None:
    for path in ("/v1/models", "/v1/models/{model}", "/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert set(DOC["paths"][path]) == {"get"}, path
    assert set(DOC["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    assert "503" in DOC["paths"]["/readyz"]["get"]["responses"]


def test_output_is_deterministic() -> None:
    assert json.dumps(openapi.document("1.2.3")) == json.dumps(DOC)
    assert json.loads(openapi.serialized("1.2.3")) == DOC


def test_schemas_use_only_standard_keywords() -> None:
    media = [m["schema"] for _, _, op in operations() for r in op["responses"].values()
             for m in resolve(r).get("content", {}).values()]  # fmt: skip
    headers = [h["schema"] for h in DOC["components"]["headers"].values()]
    for top in [*DOC["components"]["schemas"].values(), *media, *headers]:
        for s in subschemas(top):
            assert set(s) <= KEYWORDS | {"$ref"}, set(s) - KEYWORDS
            kinds = [s["type"]] if isinstance(s.get("type"), str) else s.get("type", [])
            assert set(kinds) <= TYPES and len(kinds) == len(set(kinds)), s
            assert isinstance(s.get("required", []), list) and isinstance(s.get("enum", [None]), list), s
            for key in ("anyOf", "oneOf", "allOf"):
                assert s.get(key, [{}]), s


def test_a_json_schema_validator_agrees_with_the_schemas() -> None:
    """jsonschema-rs (schemathesis validates with it too) takes each schema as JSON Schema 2020-12 and
    judges every sample as the schema walker here does."""
    for name, kind in shapes.KINDS.items():
        jsonschema_rs.meta.validate(kind.schema())
        validator = jsonschema_rs.Draft202012Validator(kind.schema())
        body = example(kind.schema())
        for field in kind.fields:
            for sample in samples(field):
                candidate = {**body, field.name: sample}
                assert validator.is_valid(candidate) == valid(kind.schema(), candidate), (name, candidate)


# --- the schemas say what check() enforces ---------------------------------------------------
GENERIC: list[Any] = [
    None, True, False, 0, 1, -1, 0.5, -0.5, 2.5, 10**400, "", "x", "function", "user", "float", [], [""], ["x"],
    [1], [True], [1.5], [[1]], [[1, "x"]], [[]], [None], [{}], [{"type": "x"}], [{"type": 1}], [{"role": "user"}],
    [{"role": "wizard"}], [{"role": 1}], [{"type": "function"}], [{"type": "function", "function": {"name": "f"}}],
    [{"type": "function", "function": {"name": 1}}], [{"role": "user", "content": [{"type": "text"}]}],
    [{"role": "user", "content": [{}]}], [{"role": "user", "content": 5}], [{"role": "user", "content": None}],
    [{"role": "user", "name": None}], [{"role": "user", "name": "n"}], [{"role": "user", "tool_calls": [{}]}],
    [{"role": "user", "tool_calls": [1]}], {}, {"type": "x"}, {"type": 1}, {"include_usage": True},
    {"include_usage": "y"}, {"include_usage": None}, {"1": 2}, {"1": "x"}, {"1": 1.5}, {"1": True},
]  # fmt: skip


def samples(field: Field) -> list[Any]:
    """GENERIC plus the edges of this field: just inside and just outside a Number's bounds, an Enum's values."""
    extra: list[Any] = []
    if isinstance(field, Number):
        step = 1 if field.integer else 1e-9
        extra = [field.low, field.high, field.low - step, field.high + step, field.low + step]
    elif isinstance(field, Enum):
        extra = [*field.values, "other"]
    elif isinstance(field, StringArray):
        extra = [["x"] * field.min_items, ["x"] * max(0, field.min_items - 1)]
    return GENERIC + extra


@pytest.mark.parametrize("kind", sorted(shapes.KINDS))
def test_a_body_of_the_required_fields_passes(kind: str) -> None:
    schema = shapes.KINDS[kind].schema()
    body = example(schema)
    assert valid(schema, body) and shapes.check(body, kind) is body


@pytest.mark.parametrize("kind", sorted(shapes.KINDS))
def test_every_field_agrees_with_its_schema(kind: str) -> None:
    spec = shapes.KINDS[kind]
    schema, base = spec.schema(), example(spec.schema())
    for field in spec.fields:
        assert schema["properties"][field.name]
        for sample in samples(field):
            body = {**base, field.name: sample}
            assert accepted(body, kind) == valid(schema, body), (field, sample)
    for name in spec.required:
        body = {k: v for k, v in base.items() if k != name}
        assert not accepted(body, kind) and not valid(schema, body), name


def test_numbers_just_outside_their_bounds_are_refused() -> None:
    for kind, spec in shapes.KINDS.items():
        base = example(spec.schema())
        for field in (f for f in spec.fields if isinstance(f, Number)):
            prop = spec.schema()["properties"][field.name]
            assert (prop["minimum"], prop["maximum"]) == (field.low, field.high)
            step = 1 if field.integer else 1e-9
            for outside in (field.low - step, field.high + step):
                with pytest.raises(shapes.ShapeError) as err:
                    shapes.check({**base, field.name: outside}, kind)
                assert (err.value.code, err.value.param) == ("invalid_value", field.name)
                assert not valid(prop, outside)


def test_integral_floats_are_the_one_difference() -> None:
    """JSON Schema counts 1.0 as an integer; check() refuses it where it wants an integer, as before."""
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 1.0}
    assert valid(shapes.KINDS["chat"].schema(), body) and not accepted(body, "chat")


_strings = st.sampled_from(["", "x", "function", "user", "wizard", "float", "base64", "text"]) | st.text(max_size=3)
_floats = st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer())
_values = st.recursive(
    st.none() | st.booleans() | st.integers() | _floats | _strings,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["type", "role", "content", "name", "function", "tool_calls", "include_usage", "1"]),
        children, max_size=3),
    max_leaves=12,
)  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), kind=st.sampled_from(sorted(shapes.KINDS)))
def test_random_bodies_agree(data: st.DataObject, kind: str) -> None:
    spec = shapes.KINDS[kind]
    names = st.sampled_from([f.name for f in spec.fields] + ["extension"])
    body = {**example(spec.schema()), **data.draw(st.dictionaries(names, _values, max_size=3))}
    assert accepted(body, kind) == valid(spec.schema(), body), body

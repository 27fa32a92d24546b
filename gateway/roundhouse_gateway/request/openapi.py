"""`GET /openapi.json`: the gateway's HTTP surface as an OpenAPI 3.1 document. Pure.

The request bodies are not written here: each POST operation's schema is shapes.KINDS[...].schema(),
built from the same field specs that check every request, so the document says what the gateway
enforces. Response bodies are the engines' own (passed through), so they are described loosely;
errors are the gateway's, in OpenAI's shape (wire.error_body).
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Any

from roundhouse_gateway.request.fields import Schema
from roundhouse_gateway.request.shapes import KINDS, Kind

OPENAPI_VERSION = "3.1.0"
DIALECT = "https://json-schema.org/draft/2020-12/schema"
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]

ERROR: Schema = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"], "description": "the request field at fault"},
                # An engine's own error may carry its HTTP status as an integer code.
                "code": {"type": ["string", "integer", "null"]},
            },
        }
    },
}
# The errors every operation may answer with, as components.responses; `retry`: a Retry-After header.
ERRORS: dict[str, tuple[str, str, bool]] = {
    "400": ("BadRequest", "the request body is malformed: `param` names the field", False),
    "401": ("Unauthorized", "missing or invalid API key", False),
    "404": ("NotFound", "no such model (or path)", False),
    "413": ("TooLarge", "the request body is over the gateway's limit", False),
    "429": ("RateLimited", "over a rate or token limit", True),
    "503": ("Unavailable", "no engine can serve the request now (starting, switching, overloaded, draining)", True),
}
RETRY_AFTER = {"description": "seconds to wait before retrying", "schema": {"type": "integer", "minimum": 1}}
REQUEST_ID = {"description": "the request's id, also in the gateway's logs", "schema": {"type": "string"}}


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _json(schema: Schema, description: str) -> dict[str, Any]:
    return {"description": description, "headers": {"X-Request-Id": _ref("headers", "RequestId")},
            "content": {"application/json": {"schema": schema}}}  # fmt: skip


def _errors(*statuses: str) -> dict[str, Any]:
    return {s: _ref("responses", ERRORS[s][0]) for s in statuses}


def request_schema_name(kind: str) -> str:
    """The components.schemas name of a kind's request body: "chat" -> "ChatRequest"."""
    return f"{kind.capitalize()}Request"


def _post(name: str, kind: Kind) -> dict[str, Any]:
    ok = _json({"type": "object"}, "the engine's answer, passed through")
    if kind.streams:
        ok["content"]["text/event-stream"] = {"schema": {"type": "string"}}
        ok["description"] += " (with `stream: true`, as server-sent events)"
    return {
        "operationId": name,
        "summary": kind.summary,
        "security": BEARER,
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": _ref("schemas", request_schema_name(name))}}},
        "responses": {"200": ok, **_errors("400", "401", "404", "413", "429", "503")},
    }  # fmt: skip


def _get(op: str, summary: str, responses: dict[str, Any], secured: bool = False, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op, "summary": summary, **extra}
    if secured:
        out["security"] = BEARER
    out["responses"] = responses
    return {"get": out}


def _gets() -> dict[str, Any]:
    model = {"type": "object", "required": ["id", "object"],
             "properties": {"id": {"type": "string"}, "object": {"const": "model"}, "created": {"type": "integer"},
                            "owned_by": {"type": "string"},
                            "roundhouse": {"type": "object", "description": "where the model runs"}}}  # fmt: skip
    models = {"type": "object", "required": ["object", "data"],
              "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": model}}}  # fmt: skip
    ready = {"type": "object", "required": ["ready", "draining"],
             "properties": {"ready": {"type": "boolean"}, "draining": {"type": "boolean"}}}  # fmt: skip
    model_param = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"},
                   "description": "the model's id (everything after /v1/models/, slashes included)"}  # fmt: skip
    text = {"description": "Prometheus metrics in the text exposition format",
            "content": {"text/plain": {"schema": {"type": "string"}}}}  # fmt: skip
    return {
        "/v1/models": _get("listModels", "List the models the gateway serves",
                           {"200": _json(models, "the models"), **_errors("401")}, secured=True),
        "/v1/models/{model}": _get("retrieveModel", "Describe one model and where it runs",
                                   {"200": _json(model, "the model"), **_errors("401", "404")}, secured=True,
                                   parameters=[model_param]),
        "/healthz": _get("healthz", "Liveness: the process answers",
                         {"200": _json({"type": "object", "properties": {"status": {"const": "ok"}}}, "alive")}),
        "/readyz": _get("readyz", "Readiness: synced with the cluster and not draining",
                        {"200": _json(ready, "ready"), "503": _json(ready, "not ready (starting or draining)")}),
        "/metrics": _get("metrics", "Prometheus metrics", {"200": text}),
        "/openapi.json": _get("openapi", "This document", {"200": _json({"type": "object"}, "OpenAPI 3.1")}),
    }  # fmt: skip


def document(version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the gateway's HTTP surface, `version` being the gateway's."""
    paths = {kind.path: {"post": _post(name, kind)} for name, kind in KINDS.items()}
    paths.update(_gets())
    responses = {}
    for status, (name, description, retry) in ERRORS.items():
        responses[name] = _json(_ref("schemas", "Error"), f"{status}: {description}")
        if retry:
            responses[name]["headers"]["Retry-After"] = _ref("headers", "RetryAfter")
    schemas = {request_schema_name(name): kind.schema() for name, kind in KINDS.items()}
    return {
        "openapi": OPENAPI_VERSION,
        "jsonSchemaDialect": DIALECT,
        "info": {
            "title": "Roundhouse gateway",
            "version": version,
            "description": "OpenAI-compatible API in front of vLLM, llama-server and Ollama engines. Request "
            "bodies are checked against these schemas before routing; fields a schema does not name pass "
            "through to the engine.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted({"Error": ERROR, **schemas}.items())),
            "responses": dict(sorted(responses.items())),
            "headers": {"RequestId": REQUEST_ID, "RetryAfter": RETRY_AFTER},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "one of the gateway's API keys"}
            },
        },
    }


@functools.cache
def serialized(version: str) -> bytes:
    """document(version) as the bytes GET /openapi.json answers with (the gateway builds them once)."""
    return json.dumps(document(version), indent=None, separators=(",", ":")).encode()


if __name__ == "__main__":  # python -m roundhouse_gateway.openapi [VERSION] > openapi.json
    print(json.dumps(document(sys.argv[1] if len(sys.argv) > 1 else "dev"), indent=2))

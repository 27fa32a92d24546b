"""Request shapes: every malformed body is a 400 naming the field; well-formed ones pass untouched;
and no JSON value of any shape makes the parsing layer raise anything else (hypothesis)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roundhouse_gateway.http.wire import ClientError
from roundhouse_gateway.request import shapes
from roundhouse_gateway.request.read import parse_request
from tests.support.bad_requests import BAD, MSG, Bad

SCOPE: dict[str, Any] = {"headers": []}


@pytest.mark.parametrize("case", BAD, ids=[c.id for c in BAD])
def test_malformed_bodies_are_400_naming_the_field(case: Bad) -> None:
    with pytest.raises(ClientError) as err:
        parse_request(case.body, case.kind, SCOPE)
    assert (err.value.status, err.value.code, err.value.param) == (400, case.code, case.param), err.value.message


GOOD = [
    ("chat", {"model": "m", "messages": MSG}),
    ("chat", {"model": "m", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": [
        {"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": "data:,"}}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function",
                                                               "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "content": "r", "tool_call_id": "1"}],
      "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
      "tool_choice": "auto", "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
      "stream": True, "stream_options": {"include_usage": True}, "n": 1, "temperature": 0.7, "top_p": 1,
      "stop": ["\n"], "seed": 1, "max_tokens": 0, "logit_bias": {"2": -100}, "user": "u", "logprobs": True,
      "top_logprobs": 2, "extra_engine_field": {"anything": [1, 2]}}),
    ("completions", {"model": "m", "prompt": [[1, 2], [3]], "echo": True, "logprobs": 1, "stop": "x"}),
    ("completions", {"model": "m", "prompt": ["a", "b"], "max_tokens": None}),
    ("embeddings", {"model": "m", "input": [1, 2, 3], "encoding_format": "base64", "dimensions": 8}),
    ("embeddings", {"model": "m", "input": "a", "stream": False, "encoding_format": None}),
    ("chat", {"model": "m", "messages": MSG, "max_tokens": 2**31 - 1, "seed": -(2**63), "temperature": 2,
              "top_p": 0, "logit_bias": {"1": 10**400}}),
    ("responses", {"model": "m", "input": "hi"}),
    ("responses", {"model": "m", "input": [{"role": "user", "content": "hi"},
                                           {"type": "message", "role": "user", "content": [{"type": "input_text",
                                                                                            "text": "x"}]},
                                           {"type": "function_call_output", "call_id": "c", "output": "{}"}],
      "instructions": "be brief", "stream": True, "max_output_tokens": 1, "temperature": 0, "top_p": 1,
      "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}, {"type": "web_search"}],
      "previous_response_id": "resp_1", "store": False, "metadata": {"k": "v"}, "user": "u",
      "reasoning": {"effort": "low"}, "text": {"format": {"type": "text"}}}),
    ("rerank", {"model": "m", "query": "q", "documents": ["a", "b"], "top_n": 1, "return_documents": True}),
    ("rerank", {"model": "m", "query": "", "documents": [""], "top_n": None}),
    ("score", {"model": "m", "text_1": "a", "text_2": ["b", "c"]}),
    ("score", {"model": "m", "text_1": ["a"], "text_2": "b", "truncate_prompt_tokens": 8}),
    ("tokenize", {"model": "m", "prompt": "hi", "add_special_tokens": False, "return_token_strs": True}),
    ("tokenize", {"model": "m", "messages": MSG, "prompt": None, "add_generation_prompt": True}),
    ("detokenize", {"model": "m", "tokens": [1, 2, 3]}),
    ("detokenize", {"model": "m", "tokens": []}),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "body"), GOOD)
def test_well_formed_bodies_pass_unchanged(kind: str, body: dict[str, Any]) -> None:
    parsed, features, rewritten = parse_request(json.dumps(body).encode(), kind, SCOPE)
    assert parsed == body and not rewritten and features.model == "m"


def test_a_field_spec_checks_one_field_of_a_body() -> None:
    spec = next(f for f in shapes.KINDS["chat"].fields if f.name == "n")
    for fine in ({}, {"n": None}, {"n": 128}):
        spec.check(fine)
    with pytest.raises(shapes.ShapeError, match=r"^n must be between 1 and 128, not 129$") as err:
        spec.check({"n": 129})
    assert (err.value.code, err.value.param) == ("invalid_value", "n")


def test_depth_limit_is_exact() -> None:
    ok = b'{"model": "m", "x": ' + b"[" * (shapes.MAX_DEPTH - 1) + b"]" * (shapes.MAX_DEPTH - 1) + b"}"
    shapes.load(ok)
    with pytest.raises(shapes.ShapeError, match="nested deeper"):
        shapes.load(ok.replace(b"[", b"[[", 1).replace(b"]", b"]]", 1))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=25,
)
FIELDS = ["model", "messages", "tools", "tool_choice", "response_format", "stream", "stream_options", "n",
          "temperature", "top_p", "stop", "max_tokens", "seed", "logit_bias", "prompt", "input", "engine", "role",
          "content", "echo", "logprobs", "encoding_format", "dimensions", "user", "instructions", "max_output_tokens",
          "metadata", "query", "documents", "top_n", "text_1", "text_2", "tokens", "add_special_tokens"]  # fmt: skip
bodies = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8) | json_values


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies, kind=st.sampled_from(sorted(shapes.KINDS)))
def test_any_json_is_accepted_or_a_400_never_an_exception(body: Any, kind: str) -> None:
    try:
        parse_request(json.dumps(body).encode(), kind, SCOPE)
    except ClientError as err:
        assert err.status == 400 and err.message


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=64))
def test_any_bytes_are_accepted_or_a_400(raw: bytes) -> None:
    try:
        parse_request(raw, "chat", SCOPE)
    except ClientError as err:
        assert err.status == 400

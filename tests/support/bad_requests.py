"""Malformed and hostile request bodies, each with the answer the gateway documents: 400, an error
code and the `param` naming the field. Shared by the unit tests (shapes) and the real-gateway tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MSG = [{"role": "user", "content": "hi"}]
PATHS = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
    "responses": "/v1/responses",
    "rerank": "/v1/rerank",
    "score": "/v1/score",
    "tokenize": "/tokenize",
    "detokenize": "/detokenize",
}


@dataclass(frozen=True)
class Bad:
    id: str
    kind: str  # chat, completions, embeddings
    body: bytes
    code: str
    param: str | None

    @property
    def path(self) -> str:
        return PATHS[self.kind]


def chat(**fields: Any) -> bytes:
    return json.dumps({"model": "m", "messages": MSG, **fields}).encode()


def _case(id_: str, kind: str, body: bytes | dict[str, Any], code: str, param: str | None) -> Bad:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Bad(id_, kind, raw, code, param)


T, V = "invalid_type", "invalid_value"
BAD: list[Bad] = [
    _case("not-json", "chat", b"{not json", "invalid_json", None),
    _case("array-body", "chat", b"[1, 2]", "invalid_json", None),
    _case("string-body", "chat", b'"hello"', "invalid_json", None),
    _case(
        "invalid-utf8",
        "chat",
        b'{"model": "m", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
        "invalid_json",
        None,
    ),
    _case("nan", "chat", b'{"model": "m", "messages": [], "temperature": NaN}', "invalid_json", None),
    _case("infinity", "chat", b'{"model": "m", "temperature": Infinity}', "invalid_json", None),
    _case(
        "huge-float-is-infinite",
        "chat",
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 1e400}',
        V,
        "temperature",
    ),
    _case(
        "nested-100k",
        "chat",
        b'{"model": "m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "invalid_json",
        None,
    ),
    _case("nested-100", "chat", b'{"model": "m", "x": ' + b"[" * 100 + b"]" * 100 + b"}", "invalid_json", None),
    _case("huge-integer", "chat", b'{"model": "m", "max_tokens": 1' + b"0" * 5000 + b"}", "invalid_json", None),
    _case("no-model", "chat", {"messages": MSG}, "missing_model", "model"),
    _case("model-number", "chat", {"model": 5, "messages": MSG}, "missing_model", "model"),
    _case("model-empty", "chat", {"model": "", "messages": MSG}, "missing_model", "model"),
    _case("messages-missing", "chat", {"model": "m"}, "invalid_messages", "messages"),
    _case("messages-string", "chat", {"model": "m", "messages": "hi"}, "invalid_messages", "messages"),
    _case("messages-empty", "chat", {"model": "m", "messages": []}, "invalid_messages", "messages"),
    _case("message-not-object", "chat", {"model": "m", "messages": ["hi"]}, T, "messages[0]"),
    _case("role-missing", "chat", {"model": "m", "messages": [{"content": "hi"}]}, T, "messages[0].role"),
    _case("role-number", "chat", {"model": "m", "messages": [{"role": 1, "content": "hi"}]}, T, "messages[0].role"),
    _case(
        "role-unknown", "chat", {"model": "m", "messages": [{"role": "wizard", "content": "hi"}]}, V, "messages[0].role"
    ),
    _case(
        "content-number",
        "chat",
        {"model": "m", "messages": [{"role": "user", "content": 42}]},
        T,
        "messages[0].content",
    ),
    _case(
        "content-object",
        "chat",
        {"model": "m", "messages": [{"role": "user", "content": {"text": "x"}}]},
        T,
        "messages[0].content",
    ),
    _case(
        "content-part-untyped",
        "chat",
        {"model": "m", "messages": [{"role": "user", "content": [{"text": "x"}]}]},
        T,
        "messages[0].content[0]",
    ),
    _case(
        "name-number",
        "chat",
        {"model": "m", "messages": [{"role": "user", "content": "x", "name": 3}]},
        T,
        "messages[0].name",
    ),
    _case(
        "second-message-bad",
        "chat",
        {"model": "m", "messages": [*MSG, {"role": "user", "content": 1}]},
        T,
        "messages[1].content",
    ),
    _case(
        "tool-calls-string",
        "chat",
        {"model": "m", "messages": [{"role": "assistant", "tool_calls": "x"}]},
        T,
        "messages[0].tool_calls",
    ),
    _case("tools-object", "chat", {"model": "m", "messages": MSG, "tools": {"type": "function"}}, T, "tools"),
    _case("tool-string", "chat", {"model": "m", "messages": MSG, "tools": ["search"]}, T, "tools[0]"),
    _case(
        "tool-function-missing",
        "chat",
        {"model": "m", "messages": MSG, "tools": [{"type": "function"}]},
        T,
        "tools[0].function",
    ),
    _case(
        "tool-name-number",
        "chat",
        {"model": "m", "messages": MSG, "tools": [{"type": "function", "function": {"name": 7}}]},
        T,
        "tools[0].function",
    ),
    _case("tool-choice-number", "chat", {"model": "m", "messages": MSG, "tool_choice": 1}, T, "tool_choice"),
    _case(
        "response-format-string",
        "chat",
        {"model": "m", "messages": MSG, "response_format": "json"},
        T,
        "response_format",
    ),
    _case(
        "response-format-untyped", "chat", {"model": "m", "messages": MSG, "response_format": {}}, T, "response_format"
    ),
    _case("stream-string", "chat", {"model": "m", "messages": MSG, "stream": "yes"}, T, "stream"),
    _case("stream-number", "chat", {"model": "m", "messages": MSG, "stream": 1}, T, "stream"),
    _case("stream-options-list", "chat", {"model": "m", "messages": MSG, "stream_options": []}, T, "stream_options"),
    _case(
        "include-usage-string",
        "chat",
        {"model": "m", "messages": MSG, "stream_options": {"include_usage": "y"}},
        T,
        "include_usage",
    ),
    _case("n-zero", "chat", {"model": "m", "messages": MSG, "n": 0}, V, "n"),
    _case("n-float", "chat", {"model": "m", "messages": MSG, "n": 1.5}, T, "n"),
    _case("n-bool", "chat", {"model": "m", "messages": MSG, "n": True}, T, "n"),
    _case("temperature-string", "chat", {"model": "m", "messages": MSG, "temperature": "hot"}, T, "temperature"),
    _case("temperature-high", "chat", {"model": "m", "messages": MSG, "temperature": 9}, V, "temperature"),
    _case("top-p-negative", "chat", {"model": "m", "messages": MSG, "top_p": -0.1}, V, "top_p"),
    _case(
        "presence-penalty-high", "chat", {"model": "m", "messages": MSG, "presence_penalty": 3}, V, "presence_penalty"
    ),
    _case("max-tokens-negative", "chat", {"model": "m", "messages": MSG, "max_tokens": -1}, V, "max_tokens"),
    _case("max-tokens-string", "chat", {"model": "m", "messages": MSG, "max_tokens": "10"}, T, "max_tokens"),
    _case("max-tokens-huge", "chat", {"model": "m", "messages": MSG, "max_tokens": 10**30}, V, "max_tokens"),
    _case(
        "max-completion-tokens-float",
        "chat",
        {"model": "m", "messages": MSG, "max_completion_tokens": 2.5},
        T,
        "max_completion_tokens",
    ),
    _case("stop-number", "chat", {"model": "m", "messages": MSG, "stop": 3}, T, "stop"),
    _case("stop-list-of-numbers", "chat", {"model": "m", "messages": MSG, "stop": [1, 2]}, T, "stop"),
    _case("seed-string", "chat", {"model": "m", "messages": MSG, "seed": "42"}, T, "seed"),
    _case("user-number", "chat", {"model": "m", "messages": MSG, "user": 5}, T, "user"),
    _case("logit-bias-list", "chat", {"model": "m", "messages": MSG, "logit_bias": [1]}, T, "logit_bias"),
    _case(
        "logit-bias-string-value", "chat", {"model": "m", "messages": MSG, "logit_bias": {"1": "x"}}, T, "logit_bias"
    ),
    _case("logprobs-string", "chat", {"model": "m", "messages": MSG, "logprobs": "yes"}, T, "logprobs"),
    _case("top-logprobs-high", "chat", {"model": "m", "messages": MSG, "top_logprobs": 50}, V, "top_logprobs"),
    _case("engine-number", "chat", {"model": "m", "messages": MSG, "engine": 5}, "invalid_engine", "engine"),
    _case("prompt-missing", "completions", {"model": "m"}, "missing_prompt", "prompt"),
    _case("prompt-number", "completions", {"model": "m", "prompt": 5}, T, "prompt"),
    _case("prompt-mixed-list", "completions", {"model": "m", "prompt": ["a", 1]}, T, "prompt"),
    _case("prompt-object", "completions", {"model": "m", "prompt": {"text": "a"}}, T, "prompt"),
    _case("echo-string", "completions", {"model": "m", "prompt": "a", "echo": "yes"}, T, "echo"),
    _case("completions-logprobs-high", "completions", {"model": "m", "prompt": "a", "logprobs": 99}, V, "logprobs"),
    _case("input-missing", "embeddings", {"model": "m"}, "missing_input", "input"),
    _case("input-number", "embeddings", {"model": "m", "input": 3.5}, T, "input"),
    _case("input-nested-strings", "embeddings", {"model": "m", "input": [["a"]]}, T, "input"),
    _case(
        "encoding-format-unknown",
        "embeddings",
        {"model": "m", "input": "a", "encoding_format": "hex"},
        V,
        "encoding_format",
    ),
    _case("dimensions-zero", "embeddings", {"model": "m", "input": "a", "dimensions": 0}, V, "dimensions"),
    _case("embeddings-stream", "embeddings", {"model": "m", "input": "a", "stream": True}, "invalid_stream", "stream"),
    # An integer past 1e308 once raised OverflowError (a 500) in the range check.
    _case(
        "max-tokens-400-digits",
        "chat",
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1' + b"0" * 400 + b"}",
        V,
        "max_tokens",
    ),
    _case("responses-no-model", "responses", {"input": "hi"}, "missing_model", "model"),
    _case("responses-input-missing", "responses", {"model": "m"}, "missing_input", "input"),
    _case("responses-input-null", "responses", {"model": "m", "input": None}, T, "input"),
    _case("responses-input-number", "responses", {"model": "m", "input": 5}, T, "input"),
    _case("responses-input-object", "responses", {"model": "m", "input": {"role": "user"}}, T, "input"),
    _case("responses-input-item-string", "responses", {"model": "m", "input": ["hi"]}, T, "input[0]"),
    _case("responses-input-item-untyped", "responses", {"model": "m", "input": [{"content": "x"}]}, T, "input[0]"),
    _case("responses-input-item-role-number", "responses", {"model": "m", "input": [{"role": 1}]}, T, "input[0]"),
    _case(
        "responses-instructions-number", "responses", {"model": "m", "input": "x", "instructions": 1}, T, "instructions"
    ),
    _case("responses-stream-string", "responses", {"model": "m", "input": "x", "stream": "yes"}, T, "stream"),
    _case(
        "responses-max-output-tokens-zero",
        "responses",
        {"model": "m", "input": "x", "max_output_tokens": 0},
        V,
        "max_output_tokens",
    ),
    _case(
        "responses-max-output-tokens-float",
        "responses",
        {"model": "m", "input": "x", "max_output_tokens": 9.5},
        T,
        "max_output_tokens",
    ),
    _case(
        "responses-temperature-high", "responses", {"model": "m", "input": "x", "temperature": 2.5}, V, "temperature"
    ),
    _case("responses-top-p-string", "responses", {"model": "m", "input": "x", "top_p": "1"}, T, "top_p"),
    _case("responses-tools-object", "responses", {"model": "m", "input": "x", "tools": {"type": "x"}}, T, "tools"),
    _case("responses-tool-untyped", "responses", {"model": "m", "input": "x", "tools": [{"name": "f"}]}, T, "tools[0]"),
    _case(
        "responses-previous-id-number",
        "responses",
        {"model": "m", "input": "x", "previous_response_id": 7},
        T,
        "previous_response_id",
    ),
    _case("responses-store-string", "responses", {"model": "m", "input": "x", "store": "no"}, T, "store"),
    _case("responses-metadata-list", "responses", {"model": "m", "input": "x", "metadata": []}, T, "metadata"),
    _case("responses-user-number", "responses", {"model": "m", "input": "x", "user": 1}, T, "user"),
    _case("rerank-no-model", "rerank", {"query": "q", "documents": ["d"]}, "missing_model", "model"),
    _case("rerank-query-missing", "rerank", {"model": "m", "documents": ["d"]}, "missing_query", "query"),
    _case("rerank-query-number", "rerank", {"model": "m", "query": 1, "documents": ["d"]}, T, "query"),
    _case("rerank-documents-missing", "rerank", {"model": "m", "query": "q"}, "missing_documents", "documents"),
    _case("rerank-documents-empty", "rerank", {"model": "m", "query": "q", "documents": []}, V, "documents"),
    _case("rerank-documents-string", "rerank", {"model": "m", "query": "q", "documents": "d"}, T, "documents"),
    _case("rerank-documents-numbers", "rerank", {"model": "m", "query": "q", "documents": [1]}, T, "documents"),
    _case("rerank-top-n-zero", "rerank", {"model": "m", "query": "q", "documents": ["d"], "top_n": 0}, V, "top_n"),
    _case("rerank-top-n-float", "rerank", {"model": "m", "query": "q", "documents": ["d"], "top_n": 1.5}, T, "top_n"),
    _case(
        "rerank-return-documents-string",
        "rerank",
        {"model": "m", "query": "q", "documents": ["d"], "return_documents": "yes"},
        T,
        "return_documents",
    ),
    _case("score-no-model", "score", {"text_1": "a", "text_2": "b"}, "missing_model", "model"),
    _case("score-text-1-missing", "score", {"model": "m", "text_2": "b"}, "missing_text_1", "text_1"),
    _case("score-text-2-missing", "score", {"model": "m", "text_1": "a"}, "missing_text_2", "text_2"),
    _case("score-text-1-number", "score", {"model": "m", "text_1": 1, "text_2": "b"}, T, "text_1"),
    _case("score-text-2-mixed", "score", {"model": "m", "text_1": "a", "text_2": ["b", 2]}, T, "text_2"),
    _case("tokenize-no-model", "tokenize", {"prompt": "hi"}, "missing_model", "model"),
    _case("tokenize-neither", "tokenize", {"model": "m"}, "missing_prompt", "prompt"),
    _case(
        "tokenize-both-null", "tokenize", {"model": "m", "prompt": None, "messages": None}, "missing_prompt", "prompt"
    ),
    _case("tokenize-both", "tokenize", {"model": "m", "prompt": "hi", "messages": MSG}, V, "messages"),
    _case("tokenize-prompt-list", "tokenize", {"model": "m", "prompt": ["hi"]}, T, "prompt"),
    _case("tokenize-messages-empty", "tokenize", {"model": "m", "messages": []}, "invalid_messages", "messages"),
    _case("tokenize-role-unknown", "tokenize", {"model": "m", "messages": [{"role": "wizard"}]}, V, "messages[0].role"),
    _case(
        "tokenize-add-special-tokens-string",
        "tokenize",
        {"model": "m", "prompt": "x", "add_special_tokens": "y"},
        T,
        "add_special_tokens",
    ),
    _case("detokenize-no-model", "detokenize", {"tokens": [1]}, "missing_model", "model"),
    _case("detokenize-tokens-missing", "detokenize", {"model": "m"}, "missing_tokens", "tokens"),
    _case("detokenize-tokens-number", "detokenize", {"model": "m", "tokens": 5}, T, "tokens"),
    _case("detokenize-tokens-strings", "detokenize", {"model": "m", "tokens": ["a"]}, T, "tokens"),
    _case("detokenize-tokens-bools", "detokenize", {"model": "m", "tokens": [True]}, T, "tokens"),
    _case("detokenize-tokens-floats", "detokenize", {"model": "m", "tokens": [1.5]}, T, "tokens"),
]

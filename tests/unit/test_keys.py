"""Keys with identities, limits and usage: the pure parts, over an injected clock."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from roundhouse_gateway.keys.keys import Identity, KeyFileError, digest_of, parse_keys
from roundhouse_gateway.keys.limits import Limiter, duration
from roundhouse_gateway.keys.usage import Usage
from roundhouse_gateway.request.sse import strip_usage, usage_of

MID_MONTH = datetime(2026, 12, 15, 12, 0, tzinfo=UTC).timestamp()


def test_the_old_one_key_per_line_form_still_works_and_names_each_key_without_showing_it() -> None:
    ring = parse_keys("# team keys\nsk-one\n\n  sk-two  \n")
    one, two = ring.lookup("sk-one"), ring.lookup("sk-two")
    assert one is not None and two is not None and one.name != two.name
    assert one.name == f"key-{digest_of('sk-one')[:8]}" and "sk-one" not in one.name
    assert ring.lookup("sk-three") is None and ring.lookup("") is None
    assert not one.limited and one.may_use_model("anything")


def test_entries_hold_a_key_or_its_digest_with_models_engines_and_limits() -> None:
    ring = parse_keys(f"""
keys:
  - name: team-a
    key: sk-a
    models: ["llama-*"]
    engines: [gpu-*]
    requestsPerMinute: 60
    tokensPerMinute: 1000
    monthlyTokenBudget: 100000
  - name: team-b
    sha256: {digest_of("sk-b")}
""")
    a, b = ring.lookup("sk-a"), ring.lookup("sk-b")
    assert a == Identity("team-a", ("llama-*",), ("gpu-*",), 60, 1000, 100000)
    assert a.may_use_model("llama-3") and not a.may_use_model("qwen") and a.may_use_engine("gpu-1")
    assert b is not None and b.name == "team-b" and not b.limited
    assert ring.names() == ["team-a", "team-b"]


@pytest.mark.parametrize(("text", "words"), [
    ("keys:\n  - name: a\n", "keys.0: Value error, give exactly one of key and sha256"),
    ("keys:\n  - name: a\n    key: k\n    sha256: " + "a" * 64 + "\n", "give exactly one of key and sha256"),
    ("keys:\n  - name: 'has space'\n    key: k\n", "keys.0.name"),
    ("keys:\n  - name: a\n    key: k\n    requestsPerMinute: 0\n", "keys.0.requestsPerMinute"),
    ("keys:\n  - name: a\n    key: k\n    rpm: 5\n", "keys.0.rpm: Extra inputs are not permitted"),
    ("keys:\n  - name: a\n    key: k\n  - name: a\n    key: j\n", "keys.1.name: 'a' is used by another entry"),
    ("keys:\n  - name: a\n    key: k\n  - name: b\n    key: k\n", "keys.1: the same key as entry 'a'"),
])  # fmt: skip
def test_an_unusable_key_file_is_refused_naming_the_entry_and_field(text: str, words: str) -> None:
    with pytest.raises(KeyFileError) as err:
        parse_keys(text, "keys.yaml")
    assert str(err.value).startswith("keys.yaml: ") and words in str(err.value), err.value


def test_requests_per_minute_refuse_with_openai_headers_then_free_up_as_the_window_slides() -> None:
    who, lim = Identity("t", requests_per_minute=2), Limiter()
    first = lim.admit(who, 100.0, MID_MONTH)
    assert first.refusal is None and first.named()["x-ratelimit-remaining-requests"] == "1"
    assert first.named()["x-ratelimit-limit-requests"] == "2" and first.named()["x-ratelimit-reset-requests"] == "1m0s"
    assert lim.admit(who, 110.0, MID_MONTH).refusal is None
    third = lim.admit(who, 130.0, MID_MONTH)
    assert third.refusal is not None and third.refusal.type == "requests" and third.refusal.retry_after == 30
    assert "(RPM): Limit 2, Used 2, Requested 1. Please try again in 30s." in third.refusal.message
    assert third.named()["x-ratelimit-remaining-requests"] == "0"
    assert lim.admit(who, 160.5, MID_MONTH).refusal is None  # the first request left the window


def test_tokens_per_minute_count_what_the_engines_reported() -> None:
    who, lim = Identity("t", tokens_per_minute=100), Limiter()
    assert lim.admit(who, 0.0, MID_MONTH).refusal is None
    lim.spend(who, 60, 0.0, MID_MONTH)
    assert lim.admit(who, 10.0, MID_MONTH).named()["x-ratelimit-remaining-tokens"] == "40"
    lim.spend(who, 50, 10.0, MID_MONTH)
    refused = lim.admit(who, 20.0, MID_MONTH).refusal
    # Under the limit again once the first 60 tokens leave the window, at 60 s.
    assert refused is not None and refused.type == "tokens" and refused.retry_after == 40, refused
    assert lim.admit(who, 60.0, MID_MONTH).refusal is None


def test_a_monthly_budget_refuses_until_the_next_month() -> None:
    who, lim = Identity("t", monthly_token_budget=1000), Limiter()
    lim.spend(who, 1200, 0.0, MID_MONTH)
    refused = lim.admit(who, 1.0, MID_MONTH).refusal
    assert refused is not None and refused.code == "insufficient_quota"
    assert "used 1200 of its monthly budget of 1000 tokens; the budget renews on 2027-01-01" in refused.message
    assert refused.retry_after == int(datetime(2027, 1, 1, tzinfo=UTC).timestamp() - MID_MONTH)
    assert lim.admit(who, 2.0, datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC).timestamp()).refusal is None


def test_a_key_without_limits_is_never_counted() -> None:
    lim = Limiter()
    for t in range(1000):
        assert not lim.admit(Identity("free"), float(t), MID_MONTH).headers
    assert lim.state == {}


def test_durations_are_written_as_openai_writes_them() -> None:
    assert [duration(s) for s in (0.25, 1, 59.2, 60, 361, 3723)] == ["250ms", "1s", "1m0s", "1m0s", "6m1s", "1h2m3s"]


def test_usage_rows_by_key_model_engine_day_and_a_minute_series() -> None:
    u = Usage()
    u.record("a", "m", "e1", 200, 10, 5, MID_MONTH)
    u.record("a", "m", "e1", 200, 1, 2, MID_MONTH + 30)
    u.record("a", "", "", 404, 0, 0, MID_MONTH + 61)
    report = u.report(MID_MONTH + 90)
    assert report["rows"][:2] == [
        {"key": "a", "model": "", "engine": "", "day": "2026-12-15", "requests": 1, "promptTokens": 0,
         "completionTokens": 0, "errors": 1},
        {"key": "a", "model": "m", "engine": "e1", "day": "2026-12-15", "requests": 2, "promptTokens": 11,
         "completionTokens": 7, "errors": 0},
    ]  # fmt: skip
    assert report["totals"]["a"] == {"requests": 3, "promptTokens": 11, "completionTokens": 7, "errors": 1}
    series = report["tokensPerMinute"]
    assert len(series) == 60 and series[-2]["tokens"] == {"a": 18} and series[-1]["tokens"] == {}
    u.record("b", "m", "e2", 200, 3, 4, MID_MONTH + 86400)
    assert [r["key"] for r in u.report(MID_MONTH, key="b")["rows"]] == ["b"]
    assert u.report(MID_MONTH, day="2026-12-16")["totals"] == {"b": {"requests": 1, "promptTokens": 3,
                                                                    "completionTokens": 4, "errors": 0}}  # fmt: skip


def test_usage_keeps_about_a_month_of_days() -> None:
    u = Usage()
    for day in range(60):
        u.record("a", "m", "e", 200, 1, 1, MID_MONTH + day * 86400)
    assert len({k[3] for k in u.rows}) == 36


def event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def test_a_usage_chunk_the_client_did_not_ask_for_is_taken_out_of_the_stream() -> None:
    content = event({"choices": [{"delta": {"content": "hi"}}], "usage": None})
    usage = event({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}})
    stream = content + usage + b"data: [DONE]\n\n"
    sent, pending, seen = b"", b"", None
    for i in range(0, len(stream), 7):  # split anywhere, even inside an event
        out, pending, dropped = strip_usage(pending, stream[i : i + 7])
        sent += out
        seen = dropped or seen
    sent += pending
    assert sent == content + b"data: [DONE]\n\n"
    assert seen is not None and usage_of(seen) == (7, 2)


def test_usage_riding_on_a_content_chunk_is_removed_from_it_and_the_content_kept() -> None:
    both = event({"choices": [{"delta": {}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 3}})
    out, pending, seen = strip_usage(b"", both + b"data: [DONE]\n\n")
    assert pending == b"" and seen is not None and usage_of(seen) == (3, 0)
    assert json.loads(out.split(b"\n\n")[0][6:]) == {"choices": [{"delta": {}, "finish_reason": "stop"}]}


def test_usage_is_read_in_each_endpoint_shape() -> None:
    assert usage_of(b'{"usage": {"prompt_tokens": 4, "completion_tokens": 5}}') == (4, 5)
    assert usage_of(b'{"usage": {"input_tokens": 6, "output_tokens": 7}}') == (6, 7)
    assert usage_of(b'{"type": "response.completed", "response": {"usage": {"input_tokens": 1,'
                    b' "output_tokens": 2}}}') == (1, 2)  # fmt: skip
    assert usage_of(b"not json") == (0, 0) and usage_of(b'{"usage": {"prompt_tokens": "x"}}') == (0, 0)


def test_a_window_holds_constant_memory_at_any_rate_and_forgets_after_a_minute() -> None:
    from roundhouse_gateway.keys.limits import Window

    w = Window()
    for i in range(100_000):  # 10,000 a second for 10 s
        w.add(1000 + i / 10_000, 1)
    assert w.total == 100_000 and len(w.buckets) == 60
    w.advance(1065.0)  # seconds 1000-1005 left at 1060-1065
    assert w.total == 40_000 and w.under_at(40_000) == 1066
    w.advance(1200.0)
    assert w.total == 0 and w.empty_at() == 1200

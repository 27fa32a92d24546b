"""A/B splits and shadow copies (routing/split.py, route()) and how answers are compared (compare/)."""

from __future__ import annotations

import json
import math

import pytest

from roundhouse_api import Family
from roundhouse_gateway.compare.agreement import agreement, answer_text
from roundhouse_gateway.compare.window import Answer, Comparison, verdict
from roundhouse_gateway.engines.catalog import Catalog, Engine, ModeState
from roundhouse_gateway.request.read import parse_request
from roundhouse_gateway.routing import split
from roundhouse_gateway.routing.route import Features, route

USERS = [f"user-{i}" for i in range(2000)]
MSG = [{"role": "user", "content": "hi"}]


def binomial_bounds(n: int, p: float, z: float = 2.576) -> tuple[float, float]:
    """The 99% interval of a binomial count, normal approximation."""
    sd = math.sqrt(n * p * (1 - p))
    return n * p - z * sd, n * p + z * sd


@pytest.mark.parametrize("weights", [(100, 100), (90, 10), (1, 3), (50, 30, 20)])
def test_shares_follow_the_weights_within_the_99_percent_bounds(weights: tuple[int, ...]) -> None:
    arms = [(f"arm{i}", w) for i, w in enumerate(weights)]
    counts = {name: 0 for name, _ in arms}
    for user in USERS:
        chosen = split.arm(user, arms)
        assert chosen is not None
        counts[chosen] += 1
    for name, w in arms:
        low, high = binomial_bounds(len(USERS), w / sum(weights))
        assert low <= counts[name] <= high, (name, counts)


def test_a_user_always_gets_the_same_arm() -> None:
    arms = [("a", 70), ("b", 30)]
    first = {u: split.arm(u, arms) for u in USERS}
    assert all(split.arm(u, list(reversed(arms))) == first[u] for u in USERS)  # 100% sticky, whatever the order


def test_a_sick_arms_users_move_and_only_they() -> None:
    arms = [("a", 100), ("b", 100), ("c", 100)]
    before = {u: split.arm(u, arms) for u in USERS}
    after = {u: split.arm(u, [a for a in arms if a[0] != "c"]) for u in USERS}
    assert all(after[u] == before[u] for u in USERS if before[u] != "c")
    moved = [after[u] for u in USERS if before[u] == "c"]
    assert moved and set(moved) == {"a", "b"}


def test_weight_zero_never_wins() -> None:
    assert {split.arm(u, [("a", 0), ("b", 5)]) for u in USERS[:200]} == {"b"}
    assert split.arm("u", [("a", 0)]) is None


def test_shadow_sampling_takes_its_share_and_is_the_same_everywhere() -> None:
    taken = sum(split.sampled(f"req-{i}", "shadow", 25) for i in range(4000))
    low, high = binomial_bounds(4000, 0.25)
    assert low <= taken <= high
    assert [split.sampled(f"req-{i}", "shadow", 25) for i in range(50)] == [
        split.sampled(f"req-{i}", "shadow", 25) for i in range(50)
    ]
    assert all(split.sampled(f"r{i}", "s", 100) for i in range(100))


def test_parse_ab() -> None:
    assert split.parse_ab("ab") == (True, None)
    assert split.parse_ab("AB:candidate") == (True, "candidate")
    assert split.parse_ab("vllm") == (False, None) and split.parse_ab(None) == (False, None)


def engine(name: str, weight: int = 100, served: str = "m", **kw: object) -> Engine:
    return Engine(name, Family.VLLM, frozenset([served]), (f"http://{name}",), served, weight=weight,
                  weighted=True, **kw)  # type: ignore[arg-type]  # fmt: skip


CATALOG = Catalog((engine("a", 80), engine("b", 20), engine("s", served="s", shadow_of="m",
                                                             shadow_percent=50)), ModeState())  # fmt: skip


def test_route_puts_the_users_arm_first_and_says_so() -> None:
    chosen = {}
    for user in USERS[:400]:
        d = route(Features("m", user=user), CATALOG, lambda ep: True, lambda ep: 0.0)
        first = d.candidates[0].engine.name
        assert f"split:{first}" in d.reason and {c.engine.name for c in d.candidates} == {"a", "b"}
        chosen[user] = first
    low, high = binomial_bounds(400, 0.8)
    assert low <= sum(1 for v in chosen.values() if v == "a") <= high
    # Load does not move a user: the same arm however busy it is, while it is healthy.
    busy = route(Features("m", user=USERS[0]), CATALOG, lambda ep: True, lambda ep: 50.0 if "a" in ep else 0.0)
    assert busy.candidates[0].engine.name == chosen[USERS[0]]
    # A sick arm's users go to the other one.
    user_a = next(u for u, v in chosen.items() if v == "a")
    sick = route(Features("m", user=user_a), CATALOG, lambda ep: "a" not in ep, lambda ep: 0.0)
    assert [c.engine.name for c in sick.candidates] == ["b"]


def test_without_a_user_routing_is_by_load_as_before() -> None:
    d = route(Features("m"), CATALOG, lambda ep: True, lambda ep: 5.0 if "a" in ep else 0.0)
    assert d.candidates[0].engine.name == "b" and "split" not in d.reason


def test_engines_that_set_no_weight_are_a_pool_shared_by_load() -> None:
    pool = Catalog(tuple(Engine(n, Family.VLLM, frozenset(["m"]), (f"http://{n}",), "m") for n in "ab"), ModeState())
    for busy in ("a", "b"):
        d = route(Features("m", user="u1"), pool, lambda ep: True, lambda ep, b=busy: 5.0 if b in ep else 0.0)
        assert d.candidates[0].engine.name != busy and "split" not in d.reason


def test_ab_asks_for_the_other_arms_to_be_compared() -> None:
    d = route(Features("m", override="ab", user="u1"), CATALOG, lambda ep: True, lambda ep: 0.0)
    assert d.reason.startswith("ab") and set(d.compare) == {"a", "b"} - {d.candidates[0].engine.name}
    named = route(Features("m", override="ab:b"), CATALOG, lambda ep: True, lambda ep: 0.0)
    assert named.candidates[0].engine.name == "b" and named.compare == ("a",) and "ab:b" in named.reason
    bad = route(Features("m", override="ab:nope"), CATALOG, lambda ep: True, lambda ep: 0.0)
    assert bad.error is not None and bad.error[:2] == (400, "invalid_engine")


def test_shadows_are_the_engines_that_shadow_the_name_sampled_by_request() -> None:
    picked = [bool(split.shadows("m", f"req-{i}", CATALOG, "a")) for i in range(1000)]
    low, high = binomial_bounds(1000, 0.5)
    assert low <= sum(picked) <= high
    assert split.shadows("s", "req-1", CATALOG, None) == []  # nobody shadows the shadow
    assert CATALOG.compared == {"m"}


def test_answer_texts_of_whole_answers_and_streams() -> None:
    assert answer_text(b'{"choices": [{"message": {"role": "assistant", "content": "hi there"}}]}') == "hi there"
    assert answer_text(b'{"choices": [{"text": "legacy"}]}') == "legacy"
    stream = (b'data: {"choices": [{"delta": {"role": "assistant", "content": "hi"}}]}\n\n: ping\n\n'
              b'data: {"choices": [{"delta": {"content": " there"}}]}\n\ndata: {"choices": [], "usage": {}}\n\n'
              b"data: [DONE]\n\n")  # fmt: skip
    assert answer_text(stream) == "hi there"
    assert answer_text(b"") is None and answer_text(b'{"error": {}}') is None


def test_agreement_measures() -> None:
    assert agreement("a b  c", "a b c\n") == (True, 1.0)
    exact, sim = agreement("the cat sat on the mat", "the cat sat on a mat")
    assert not exact and 0.8 < sim < 1
    assert agreement("x y", "p q") == (False, 0.0)
    assert agreement("", "p") == (False, 0.0)


def test_the_comparison_reads_at_a_glance() -> None:
    c = Comparison(window=60)
    for i in range(20):
        c.answered("m", "a", "arm", Answer(100.0 + i, 200, 0.10, 0.5, 10))
        c.answered("m", "s", "shadow", Answer(100.0 + i, 200 if i else 500, None, 0.4, 10))  # a copy: no TTFT
        if i:
            c.paired("m", "s", 100.0 + i, i % 4 != 0, 1.0 if i % 4 else 0.5)
    c.answered("m", "a", "arm", Answer(0.0, 200, 9.0, 9.0, 1))  # outside the window
    c.answered("m", "b", "arm", Answer(110.0, 200, 0.2, 0.6, 10))
    c.answered("m", "b", "shadow", Answer(110.0, 200, None, 0.6, 10))
    report = c.report(125.0, {("m", "s"): {"shadowOf": "m", "percent": 50.0}})
    model = report["models"][0]
    arms = {r["engine"]: r for r in model["arms"]}
    assert model["baseline"] == "a" and arms["a"]["requests"] == 20 and arms["a"]["ttftP95"] == 0.1
    assert arms["s"]["errors"] == 1 and arms["s"]["percent"] == 50.0
    assert arms["s"]["ttftP50"] is None and arms["s"]["ttftP95"] is None and arms["s"]["latencyP95"] == 0.4
    assert arms["s"]["agreement"] == {"pairs": 19, "exactRate": round(15 / 19, 4),
                                      "similarity": round((15 + 4 * 0.5) / 19, 4)}  # fmt: skip
    assert model["verdicts"] == [
        "candidate b: p95 TTFT +100%, p95 latency +20%, errors 0 of 1",
        # Copies are not streamed: their total latency is compared with the primary's, never a TTFT.
        "copies to b: p95 latency +20%, errors 0 of 1",
        "shadow s: p95 latency \N{MINUS SIGN}20%, agreement 79% (similarity 0.89, 19 pairs), errors 1 of 20",
    ]


def test_a_copys_verdict_compares_total_latency_even_if_a_ttft_was_recorded() -> None:
    # Were a copy's first byte ever recorded, it is still its whole answer: the verdict does not read it.
    base = {"requests": 10, "errors": 0, "ttftP95": 0.1, "latencyP95": 1.0}
    mine = {"requests": 4, "errors": 0, "ttftP95": 0.9, "latencyP95": 0.9, "percent": 10.0}
    assert verdict("s", "shadow", mine, base) == "shadow s: p95 latency \N{MINUS SIGN}10%, errors 0 of 4"
    assert (
        verdict("c", "arm", mine, base) == "candidate c: p95 TTFT +800%, p95 latency \N{MINUS SIGN}10%, errors 0 of 4"
    )


def read(body: dict[str, object], key: str | None = None, **headers: str) -> tuple[dict[str, object], Features]:
    """A chat request as the gateway reads it, for the caller's key `key` (its name: who the request is for)."""
    scope = {"path": "/v1/chat/completions",
             "headers": [(k.lower().replace("_", "-").encode(), v.encode()) for k, v in headers.items()]}  # fmt: skip
    parsed, features, _ = parse_request(json.dumps({"model": "m", "messages": MSG, **body}).encode(), "chat", scope,
                                        key)  # fmt: skip
    return parsed, features


def arm_for(f: Features) -> str:
    return route(f, CATALOG, lambda ep: True, lambda ep: 0.0).candidates[0].engine.name


def test_without_a_user_field_the_keys_name_keeps_a_caller_in_one_arm() -> None:
    _, first = read({}, key="alice")
    assert first.user == "alice"  # no `user` field: the key's name is who the request is for
    d = route(first, CATALOG, lambda ep: True, lambda ep: 0.0)
    assert f"split:{d.candidates[0].engine.name}" in d.reason  # chosen by the split, not by load
    _, again = read({"max_tokens": 5}, key="alice")  # another request of the same key, still without `user`
    assert arm_for(again) == d.candidates[0].engine.name
    assert read({"user": "bob"}, key="alice")[1].user == "bob"  # the body's `user` comes first
    # Different keys spread over the arms by their weights (80 and 20), each key sticking to its own.
    keys = [f"key-{i}" for i in range(400)]
    arms = {k: arm_for(read({}, key=k)[1]) for k in keys}
    assert all(arm_for(read({"stream": True}, key=k)[1]) == arms[k] for k in keys[:100])
    low, high = binomial_bounds(len(keys), 0.8)
    assert low <= sum(1 for a in arms.values() if a == "a") <= high


@pytest.mark.parametrize("where", ["header", "body"])
def test_ab_may_be_asked_in_the_body_as_in_the_header(where: str) -> None:
    def ab(value: str) -> tuple[dict[str, object], Features]:
        return read({"engine": value}, key="k") if where == "body" else read({}, key="k", x_roundhouse_engine=value)

    body, f = ab("ab")
    assert f.override == "ab" and "engine" not in body  # the gateway's own field never reaches an engine
    d = route(f, CATALOG, lambda ep: True, lambda ep: 0.0)
    assert d.reason.startswith("ab") and d.compare == tuple({"a", "b"} - {d.candidates[0].engine.name})
    body, f = ab("ab:b")
    named = route(f, CATALOG, lambda ep: True, lambda ep: 0.0)
    assert named.candidates[0].engine.name == "b" and named.compare == ("a",) and "ab:b" in named.reason

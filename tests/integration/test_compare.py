"""A/B splits and shadow copies through the real gateway, against engine simulators with deterministic
answers: the comparison's figures are those of the simulators' own logs, and a shadow that fails or
hangs changes nothing for clients."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from roundhouse_gateway.compare.agreement import agreement
from tests.support.cluster import wait_until
from tests.support.gateway_stack import KEY, Stack

pytestmark = pytest.mark.integration
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "compare"
MSG = [{"role": "user", "content": "compare me"}]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path, ARTIFACTS)
    yield s
    s.stop()


def sim_log(stack: Stack, name: str) -> list[dict[str, Any]]:
    return httpx.get(f"{stack.sims[name].url}/_sim/log").json()  # type: ignore[attr-defined,no-any-return]


def chat(
    stack: Stack, user: str, stream: bool = False, engine: str | None = None, rid: str | None = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {KEY}", **({"X-Roundhouse-Engine": engine} if engine else {}),
               **({"X-Request-Id": rid} if rid else {})}  # fmt: skip
    body = {"model": "m", "messages": MSG, "user": user, "max_tokens": 6, "stream": stream}
    return httpx.post(stack.url + "/v1/chat/completions", json=body, headers=headers, timeout=30)


def test_split_and_shadow_figures_match_the_engines_own_logs(stack: Stack) -> None:
    # Arms a (weight 3) and b (weight 1) answer alike but for every 4th answer of b; the shadow s answers
    # like a but for every 3rd.
    stack.sim("a", "vllm", ["m"], vocab="w", ttft_ms=5)
    stack.sim("b", "vllm", ["m"], vocab="w", differ_every=4, ttft_ms=5)
    stack.sim("s", "vllm", ["s"], vocab="w", differ_every=3, ttft_ms=5)
    stack.start([{"name": "a", "engine": "vllm", "sims": ["a"], "routing": {"weight": 300}},
                 {"name": "b", "engine": "vllm", "sims": ["b"], "routing": {"weight": 100}},
                 {"name": "s", "engine": "vllm", "served": "s", "sims": ["s"],
                  "routing": {"shadow": {"of": "m", "percent": 50, "maxInFlight": 64}}}])  # fmt: skip
    users = [f"user-{i}" for i in range(60)]
    streamed = {u for u in users if u.endswith(("1", "3"))}
    with ThreadPoolExecutor(8) as pool:
        # Request ids of our own: which requests the shadow samples (a hash of the id) is then the same every run.
        answers = list(pool.map(lambda u: chat(stack, u, stream=u in streamed, rid=f"first-{u}"), users))
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers if r.status_code != 200]
    arm_of = {u: r.headers["x-roundhouse-engine"] for u, r in zip(users, answers, strict=True)}
    assert set(arm_of.values()) == {"a", "b"}
    again = {u: chat(stack, u).headers["x-roundhouse-engine"] for u in users[:20]}
    assert all(again[u] == arm_of[u] for u in again)  # sticky per user
    logs = {n: sim_log(stack, n) for n in ("a", "b", "s")}
    shadow = [e for e in logs["s"] if e["shadow"]]
    assert shadow and all(not e["shadow"] for n in "ab" for e in logs[n])
    assert 10 <= len(shadow) <= 70  # about half of the 80 requests
    text = {e["id"]: (n, e["text"]) for n in "ab" for e in logs[n]}

    def report() -> dict[str, Any]:
        models = stack.admin("GET", "/admin/compare").json()["models"]
        return {r["engine"]: r for r in models[0]["arms"]} if models else {}

    wait_until(
        lambda: report().get("s", {}).get("agreement", {}).get("pairs") == len(shadow),
        15,
        "every copy compared with its primary",
    )
    arms = report()
    assert arms["a"]["requests"] == len(logs["a"]) and arms["b"]["requests"] == len(logs["b"])
    assert arms["a"]["weight"] == 300 and arms["s"]["shadowOf"] == "m" and arms["s"]["percent"] == 50
    assert arms["s"]["requests"] == len(shadow) and arms["s"]["errors"] == 0
    exact = sum(e["text"].split() == text[e["id"]][1].split() for e in shadow)
    assert arms["s"]["agreement"]["exactRate"] == round(exact / len(shadow), 4)
    assert 0 < exact < len(shadow)  # some differ: the measure sees it
    # The similarity, by the gateway's measure over the texts the simulators logged: an answer that differs
    # shares half its words with the usual one (0.5), so the figure is not the exact rate again.
    similarities = [agreement(text[e["id"]][1], e["text"])[1] for e in shadow]
    assert set(similarities) == {0.5, 1.0}
    assert arms["s"]["agreement"]["similarity"] == pytest.approx(statistics.fmean(similarities), abs=1e-4)
    assert arms["a"]["answerTokens"] == 6 and arms["s"]["answerTokens"] == 6
    for name, entries in (("a", logs["a"]), ("b", logs["b"]), ("s", shadow)):  # answer lengths: those logged
        assert arms[name]["answerTokens"] == round(statistics.fmean(e["tokens"] for e in entries), 2), name
    assert arms["b"]["errors"] == 0 and arms["a"]["errors"] == 0
    page = stack.admin("GET", "/admin/compare").json()["models"][0]
    assert page["baseline"] == "a" and any(v.startswith("shadow s:") and "agreement" in v for v in page["verdicts"])
    # A copy is not streamed: no TTFT of its own, and its verdict compares total latency only.
    assert arms["s"]["ttftP50"] is None and arms["s"]["ttftP95"] is None and arms["s"]["latencyP95"] is not None
    assert [v for v in page["verdicts"] if v.startswith("shadow s: p95 latency ") and "TTFT" not in v]
    # A streamed request is copied as a non-streamed one; the client's own request to its arm still streams.
    primary = {e["id"]: e for n in "ab" for e in logs[n]}
    assert all(primary[f"first-{u}"]["stream"] == (u in streamed) for u in users)
    assert not any(e["stream"] for e in shadow)
    assert any(e["id"] in {f"first-{u}" for u in streamed} for e in shadow)  # some copies were of streamed requests
    metrics = httpx.get(stack.url + "/metrics").text
    assert f'roundhouse_gateway_shadow_requests_total{{engine="s",model="m",outcome="ok"}} {len(shadow)}.0' in metrics
    # Each pair's similarity is observed in the histogram: its count, sum and buckets are those of the logs.
    observed = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                if line.startswith("roundhouse_gateway_shadow_similarity_") and 'engine="s"' in line}  # fmt: skip
    series = 'roundhouse_gateway_shadow_similarity_{}{{engine="s",{}model="m"}}'
    assert observed[series.format("count", "")] == len(shadow)
    assert observed[series.format("sum", "")] == pytest.approx(sum(similarities))
    assert observed[series.format("bucket", 'le="0.5",')] == similarities.count(0.5)
    assert observed[series.format("bucket", 'le="0.25",')] == 0


@pytest.mark.parametrize("failure", [{"fail_status": 500}, {"hang": True}])
def test_a_shadow_that_fails_or_hangs_changes_nothing_for_clients(stack: Stack, failure: dict[str, Any]) -> None:
    stack.sim("a", "vllm", ["m"])
    stack.sim("s", "vllm", ["s"], **failure)
    stack.start([{"name": "a", "engine": "vllm", "sims": ["a"]},
                 {"name": "s", "engine": "vllm", "served": "s", "sims": ["s"],
                  "routing": {"shadow": {"of": "m", "percent": 100, "maxInFlight": 2},
                              "timeouts": {"firstByteSeconds": 60}}}])  # fmt: skip
    slowest = 0.0
    for i in range(12):
        started = time.monotonic()
        r = chat(stack, f"u{i}", stream=i % 2 == 0)
        slowest = max(slowest, time.monotonic() - started)
        assert r.status_code == 200 and r.headers["x-roundhouse-engine"] == "a", r.text
        assert "data: [DONE]" in r.text if i % 2 == 0 else r.json()["choices"][0]["message"]["content"]
    assert slowest < 5  # a hanging shadow holds no client request (each takes milliseconds)

    def shadow_row() -> dict[str, Any]:
        models = stack.admin("GET", "/admin/compare").json()["models"]
        return next((r for m in models for r in m["arms"] if r["engine"] == "s"), {})

    if failure.get("hang"):
        wait_until(lambda: shadow_row().get("shed") == 10, 10, "copies past the bound shed")  # two hang
    else:
        wait_until(lambda: shadow_row().get("errors") == 12, 10, "the shadow's errors counted")


def test_ab_per_request_answers_from_the_primary_and_copies_to_the_other_arm(stack: Stack) -> None:
    stack.sim("a", "vllm", ["m"], vocab="w")
    stack.sim("b", "vllm", ["m"], vocab="w")
    stack.start([{"name": "a", "engine": "vllm", "sims": ["a"]}, {"name": "b", "engine": "vllm", "sims": ["b"]}])
    r = chat(stack, "someone", engine="ab:b")
    assert r.status_code == 200 and r.headers["x-roundhouse-engine"] == "b"
    assert "ab:b" in r.headers["x-roundhouse-route-reason"]
    rid = r.headers["x-request-id"]
    wait_until(lambda: any(e["id"] == rid and e["shadow"] for e in sim_log(stack, "a")), 10, "a's copy")
    assert [e["shadow"] for e in sim_log(stack, "b") if e["id"] == rid] == [False]

    def copy_row() -> dict[str, Any]:
        models = stack.admin("GET", "/admin/compare").json()["models"]
        return next((r for m in models for r in m["arms"] if r["role"] == "shadow" and r["engine"] == "a"), {})

    row = wait_until(lambda: copy_row().get("agreement") and copy_row(), 10, "the pair compared")
    assert row["agreement"]["exactRate"] == 1.0 and row["requests"] == 1

"""The state store's pure parts: a store's answer gives the local limiter's refusals and headers, batches
add up, URLs are checked and never shown with their password."""

from __future__ import annotations

import pytest

from roundhouse_gateway.keys.keys import Identity
from roundhouse_gateway.keys.limits import Limiter, Window
from roundhouse_gateway.state.keeper import verdict
from roundhouse_gateway.state.open import StateError, open_state
from roundhouse_gateway.state.redis_store import redacted
from roundhouse_gateway.state.store import Batch, Counts

WHO = Identity("team-a", requests_per_minute=3, tokens_per_minute=100, monthly_token_budget=1000)
WALL = 1_796_000_000.0  # 2026-12-01


def test_a_window_from_a_store_is_the_window_counted_here() -> None:
    here = Window()
    for second, n in ((100, 2), (130, 1), (159, 4)):
        here.add(second + 0.5, n)
    there = Window.of(159, [100, 2, 130, 1, 159, 4, 99, 7])  # 99 left the window at 159
    assert (there.total, there.last, there.under_at(5), there.empty_at()) == (
        here.total, here.last, here.under_at(5), here.empty_at())  # fmt: skip


@pytest.mark.parametrize("admitted", [1, 2, 3, 4])
def test_the_store_s_answer_reads_as_the_local_limiter_s(admitted: int) -> None:
    local, counted = Limiter(), []
    for i in range(admitted):
        v = local.admit(WHO, 200.0 + i, WALL)
        if v.refusal is None:
            counted += [200 + i, 1]
    now = 200.0 + admitted - 1
    ok = admitted <= 3
    store = verdict(WHO, Counts(ok, now, 0, counted, []), WALL, True)
    assert (store.refusal, store.headers) == (v.refusal, v.headers)


def test_a_spent_budget_is_the_store_s_refusal_too() -> None:
    v = verdict(WHO, Counts(False, 200.0, 1000, [], []), WALL, False)
    assert v.refusal is not None and v.refusal.code == "insufficient_quota" and "used 1000 of" in v.refusal.message


def test_an_admission_without_headers_builds_nothing() -> None:
    v = verdict(WHO, Counts(True, 200.0, 0, [], []), WALL, False)
    assert v.refusal is None and v.headers is None


def test_a_batch_adds_rows_month_window_and_minutes() -> None:
    b = Batch()
    assert not b
    b.add(WHO, ("team-a", "m", "e", "2026-12-01"), 200, 3, 4, "2026-12", 10)
    b.add(WHO, ("team-a", "m", "e", "2026-12-01"), 429, 0, 0, "2026-12", 10)
    row = b.rows[("team-a", "m", "e", "2026-12-01")]
    assert (row.requests, row.prompt_tokens, row.completion_tokens, row.errors) == (2, 3, 4, 1)
    assert b.month == {("2026-12", "team-a"): 7} and b.window == {"team-a": 7} and b.minutes == {(10, "team-a"): 7}
    b.add(Identity("free"), ("free", "m", "e", "2026-12-01"), 200, 1, 1, "2026-12", 10)
    assert "free" not in b.window  # no tokensPerMinute: no window to feed


def test_a_password_is_never_shown() -> None:
    assert redacted("redis://:s3cret@store:6379/0") == "redis://:***@store:6379/0"
    assert redacted("rediss://user:pw@store/1") == "rediss://user:***@store/1"
    assert redacted("redis://store:6379/0") == "redis://store:6379/0"


@pytest.mark.parametrize("url", ["postgres://x", "sqlite://relative.db", "http://store"])
def test_an_unusable_url_is_refused_saying_what_is_wanted(url: str) -> None:
    with pytest.raises(StateError, match=r"want|absolute"):
        open_state(url)


def test_memory_is_no_store() -> None:
    k = open_state("memory:")
    assert k.store is None and k.scope()["state"]["store"] == "memory"


def test_windows_put_back_after_a_restart_refuse_as_before() -> None:
    before = Limiter()
    for i in range(3):
        assert before.admit(WHO, 500.0 + i, WALL + i).refusal is None
    before.spend(WHO, 60, 502.5, WALL + 2.5)
    counts = before.windows(503.0, WALL - 500.0)  # epoch time = monotonic + (WALL - 500)
    assert sorted(counts) == [("team-a", "requests", int(WALL) + i, 1) for i in range(3)] + [
        ("team-a", "tokens", int(WALL) + 2, 60)]  # fmt: skip
    after = Limiter()  # another process: its monotonic clock is elsewhere
    after.restore(counts, WALL - 9000.0)
    v = after.admit(WHO, 9003.0, WALL + 3)
    assert v.refusal is not None and "Used 3, Requested 1" in v.refusal.message
    assert after.admit(WHO, 9061.0, WALL + 61).refusal is None  # the first has left the window


def test_counts_that_left_the_window_are_not_put_back() -> None:
    after = Limiter()
    after.restore([("team-a", "requests", int(WALL) - 120, 3)], WALL - 9000.0)
    assert after.admit(WHO, 9000.0, WALL).refusal is None

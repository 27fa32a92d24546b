"""The gateway's state keeper over real stores: a SQLite file, and Debian's redis-server on loopback
(its own port and directory) shared by two keepers, as two gateway replicas share it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from roundhouse_gateway.http.wire import ClientError
from roundhouse_gateway.keys.keys import Identity
from roundhouse_gateway.state.keeper import Keeper
from roundhouse_gateway.state.open import StateError, open_state
from roundhouse_gateway.state.redis_store import ADMIT
from tests.support.redis_server import RedisServer

RPM = Identity("team-a", requests_per_minute=5)
BUDGET = Identity("team-b", monthly_token_budget=100)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


def totals(report: dict[str, object], key: str) -> dict[str, int]:
    return report["totals"][key]  # type: ignore[index, no-any-return]


def test_two_keepers_on_one_redis_admit_the_limit_together(redis: RedisServer) -> None:
    async def run() -> list[bool]:
        a, b = open_state(redis.url), open_state(redis.url)
        verdicts = await asyncio.gather(*[(a if i % 2 else b).admit(RPM, True) for i in range(12)])
        await a.close()
        await b.close()
        return [v.refusal is None for v in verdicts]

    admitted = asyncio.run(run())
    assert admitted.count(True) == 5, admitted


def test_a_refusal_from_the_store_is_the_local_limiter_s_answer(redis: RedisServer) -> None:
    async def run() -> None:
        k = open_state(redis.url)
        for _ in range(5):
            assert (await k.admit(RPM, True)).refusal is None
        v = await k.admit(RPM, False)
        assert v.refusal is not None and v.refusal.type == "requests" and v.refusal.code == "rate_limit_exceeded"
        assert "Limit 5, Used 5, Requested 1" in v.refusal.message and 1 <= v.refusal.retry_after <= 60
        assert v.named()["x-ratelimit-remaining-requests"] == "0"
        await k.close()

    asyncio.run(run())


def test_a_budget_spent_through_one_keeper_is_refused_by_the_other(redis: RedisServer) -> None:
    async def run() -> None:
        a, b = open_state(redis.url), open_state(redis.url)
        assert (await b.admit(BUDGET, False)).refusal is None
        a.charge(BUDGET, "m", "e", 200, 60, 50)
        assert await a.flush()
        v = await b.admit(BUDGET, False)
        assert v.refusal is not None and v.refusal.code == "insufficient_quota" and "used 110 of" in v.refusal.message
        assert (await b.month_used(["team-b"], time.time())) == {"team-b": 110}
        await a.close()
        await b.close()

    asyncio.run(run())


def test_a_replica_s_unwritten_tokens_count_against_the_budget(redis: RedisServer) -> None:
    async def run() -> None:
        k = open_state(redis.url)
        assert (await k.admit(BUDGET, False)).refusal is None
        k.charge(BUDGET, "m", "e", 200, 70, 30)  # not written yet: the next batch has it
        v = await k.admit(BUDGET, False)
        assert v.refusal is not None and v.refusal.code == "insufficient_quota" and "used 100 of" in v.refusal.message
        await k.close()

    asyncio.run(run())


def test_an_outage_is_counted_locally_and_written_back(redis: RedisServer) -> None:
    async def run() -> None:
        k = open_state(redis.url, timeout=0.2)
        k.charge(RPM, "m", "e", 200, 1, 2)
        assert await k.flush()
        redis.kill()
        started = time.monotonic()
        for _ in range(3):  # served from this replica's own counts: never an error
            assert (await k.admit(RPM, False)).refusal is None
            k.charge(RPM, "m", "e", 200, 1, 2)
        assert time.monotonic() - started < 1 and k.degraded
        assert not await k.flush()
        assert (await k.report(time.time(), None, None))["limitsScope"] == "replica"
        redis.start()
        assert await k.flush() and not k.degraded
        report = await k.report(time.time(), None, None)
        assert report["limitsScope"] == "store"
        assert totals(report, "team-a") == {"requests": 4, "promptTokens": 4, "completionTokens": 8, "errors": 0}
        await k.close()

    asyncio.run(run())


def test_a_store_that_hangs_costs_a_request_the_timeout_at_most(redis: RedisServer) -> None:
    async def run() -> None:
        k = open_state(redis.url, timeout=0.2)
        assert (await k.admit(RPM, False)).refusal is None
        assert redis.proc is not None
        os.kill(redis.proc.pid, signal.SIGSTOP)  # up, connected, and answering nothing
        try:
            started = time.monotonic()
            verdicts = await asyncio.gather(*(k.admit(RPM, False) for _ in range(3)))
            assert time.monotonic() - started < 0.5 and k.degraded  # twice the timeout at most
            assert all(v.refusal is None for v in verdicts)
        finally:
            os.kill(redis.proc.pid, signal.SIGCONT)
        assert await k.flush() and not k.degraded
        await k.close()

    asyncio.run(run())


def test_a_restarted_store_is_used_again_at_once(redis: RedisServer) -> None:
    """After a restart the connection is dead and the store has forgotten the admission script: the next
    admission reconnects and gives the script again, decided in the store, not counted locally."""

    async def run() -> None:
        k = open_state(redis.url, timeout=0.5)
        assert (await k.admit(RPM, False)).refusal is None
        redis.stop()
        redis.start()
        assert (await k.admit(RPM, False)).refusal is None
        assert not k.degraded
        await k.close()

    asyncio.run(run())


def test_a_store_that_refuses_the_script_is_counted_locally_not_a_hang(redis: RedisServer) -> None:
    """A user that may run the admission script but not load it (an ACL): the store answers NOSCRIPT,
    then refuses SCRIPT LOAD. The request is decided locally at once; it must never wait forever."""
    assert redis.command("ACL", "SETUSER", "gw", "on", ">pw", "~*", "&*", "+@all", "-script|load") == b"+OK\r\n"

    async def run() -> None:
        k = open_state(f"redis://gw:pw@127.0.0.1:{redis.port}/0", timeout=0.2)
        started = time.monotonic()
        verdict = await asyncio.wait_for(k.admit(RPM, False), 5)
        assert verdict.refusal is None and k.degraded and time.monotonic() - started < 1
        assert redis.command("SCRIPT", "LOAD", ADMIT).startswith(b"$40")  # loaded by a user who may
        assert await k.flush() and not k.degraded
        assert (await k.admit(RPM, False)).refusal is None and not k.degraded
        await k.close()

    asyncio.run(run())


def test_a_password_store_takes_the_password_from_the_url_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """requirepass, as the chart runs it: a wrong password is a store that fails (counted locally); the
    right one, in the URL or in ROUNDHOUSE_STATE_PASSWORD (the chart's Secret), shares the limit."""
    server = RedisServer(tmp_path / "redis", password="s3cret").start()
    host = f"127.0.0.1:{server.port}"

    async def run() -> None:
        wrong = open_state(f"redis://:wrong@{host}/0", timeout=0.2)
        assert (await wrong.admit(RPM, False)).refusal is None and wrong.degraded
        await wrong.close()
        in_url = open_state(f"redis://:s3cret@{host}/0")
        monkeypatch.setenv("ROUNDHOUSE_STATE_PASSWORD", "s3cret")
        from_env = open_state(server.url)
        verdicts = [await (in_url if i % 2 else from_env).admit(RPM, False) for i in range(8)]
        # Counted together in the store: 5 in all (each replica alone would have admitted 5).
        assert [v.refusal is None for v in verdicts].count(True) == 5
        assert not in_url.degraded and not from_env.degraded
        await in_url.close()
        await from_env.close()

    try:
        asyncio.run(run())
    finally:
        server.kill()


def test_closed_answers_503_while_the_store_is_away(redis: RedisServer) -> None:
    async def run() -> None:
        k = open_state(redis.url, on_failure="closed", timeout=0.2)
        assert (await k.admit(RPM, False)).refusal is None
        redis.kill()
        with pytest.raises(ClientError) as err:
            await k.admit(RPM, False)
        assert err.value.status == 503 and "state store" in err.value.message
        redis.start()
        assert await k.flush()
        assert (await k.admit(RPM, False)).refusal is None
        await k.close()

    asyncio.run(run())


def test_a_batch_sent_twice_is_counted_once(redis: RedisServer) -> None:
    async def run() -> None:
        k = open_state(redis.url)
        k.charge(RPM, "m", "e", 200, 3, 4)
        batch = k.pending
        assert await k.flush()
        assert k.store is not None
        await k.store.write(batch)  # as if the first answer had been lost and the keeper sent it again
        assert totals(await k.report(time.time(), None, None), "team-a")["requests"] == 1
        await k.close()

    asyncio.run(run())


def test_sqlite_keeps_usage_and_the_month_across_a_restart(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'state.sqlite'}"

    async def first() -> dict[str, object]:
        k = open_state(url)
        for _ in range(3):
            assert (await k.admit(BUDGET, False)).refusal is None
            k.charge(BUDGET, "m", "e", 200, 20, 10)
        k.charge(RPM, "m", "", 429, 0, 0)
        report = await k.report(time.time(), None, None)
        await k.close()
        return report

    async def second(before: dict[str, object]) -> None:
        k = open_state(url)
        after = await k.report(time.time(), None, None)
        assert after["rows"] == before["rows"] and after["tokensPerMinute"] == before["tokensPerMinute"]
        assert k.limiter.month_used("team-b", time.time()) == 90
        k.charge(BUDGET, "m", "e", 200, 5, 5)
        v = await k.admit(BUDGET, False)
        assert v.refusal is not None and "used 100 of" in v.refusal.message
        await k.close()

    asyncio.run(second(asyncio.run(first())))


def test_sqlite_keeps_the_per_minute_windows_across_a_stop(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'state.sqlite'}"

    async def first() -> None:
        k = open_state(url)
        for _ in range(5):
            assert (await k.admit(RPM, False)).refusal is None
        await k.close()

    async def second() -> None:
        k = open_state(url)
        v = await k.admit(RPM, False)
        assert v.refusal is not None and "Limit 5, Used 5" in v.refusal.message
        await k.close()

    asyncio.run(first())
    asyncio.run(second())


def test_sqlite_counts_a_batch_sent_twice_once(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'state.sqlite'}"

    async def run() -> None:
        k = open_state(url)
        k.charge(RPM, "m", "e", 200, 3, 4)
        batch = k.pending
        assert await k.flush() and k.store is not None
        await k.store.write(batch)  # a write cancelled at shutdown runs on in its thread, and is sent again
        await k.close()

    asyncio.run(run())
    rows = asyncio.run(open_state(url).report(time.time(), None, None))["rows"]
    assert [r["requests"] for r in rows] == [1]


def test_one_sqlite_file_is_one_gateway_s(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'state.sqlite'}"
    first = open_state(url)
    with pytest.raises(StateError, match="another gateway keeps its state in"):
        open_state(url)
    asyncio.run(first.close())
    asyncio.run(open_state(url).close())  # free again once the first has gone


def test_memory_keeps_nothing_and_calls_nothing() -> None:
    k = Keeper()
    assert asyncio.run(k.flush()) and k.scope()["limitsScope"] == "replica"

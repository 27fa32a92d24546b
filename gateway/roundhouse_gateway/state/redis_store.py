"""The shared store: a Redis-protocol server (Redis, Valkey) that every gateway replica uses.

Admission is one Lua script, run atomically by the server on its own clock: for each request it drops
what left the key's windows, checks the budget and both windows, and counts the request if it is
admitted, so N replicas together never admit more than the limit. The admissions that arrive while
one call is on its way go together in the next call: one round trip for all of them. Counts are
written by a second script, once per batch id: a batch sent again after an answer was lost is not
counted twice. No Redis Cluster: the
scripts name keys they build themselves.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from roundhouse_gateway import metrics
from roundhouse_gateway.keys.keys import Identity
from roundhouse_gateway.keys.usage import DAYS_KEPT, Row
from roundhouse_gateway.state.store import Batch, Counts, Loaded, StoreError

PREFIX = "roundhouse:"
SEP = "\t"  # between key, model and engine in a usage field: none of them holds a tab

ADMIT = """
local sec = tonumber(redis.call('TIME')[1])
local function window(k)
  local all = redis.call('HGETALL', k)
  local total, keep, old = 0, {}, {}
  for i = 1, #all, 2 do
    local s, n = tonumber(all[i]), tonumber(all[i + 1])
    if s <= sec - 60 then old[#old + 1] = all[i] else total = total + n; keep[#keep + 1] = s; keep[#keep + 1] = n end
  end
  if #old > 0 then redis.call('HDEL', k, unpack(old)) end
  return total, keep
end
local out = {}
for i = 0, #ARGV / 5 - 1 do
  local a, k = i * 5, i * 3
  local rpm, tpm, budget = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local used = tonumber(redis.call('HGET', KEYS[k + 3], ARGV[a + 1]) or '0')
  local rtotal, rb, ttotal, tb = 0, {}, 0, {}
  if rpm then rtotal, rb = window(KEYS[k + 1]) end
  if tpm then ttotal, tb = window(KEYS[k + 2]) end
  local ok = (not budget or used < budget) and (not tpm or ttotal < tpm) and (not rpm or rtotal < rpm)
  if ok and rpm then
    redis.call('HINCRBY', KEYS[k + 1], sec, 1)
    redis.call('EXPIRE', KEYS[k + 1], 61)
    rb[#rb + 1] = sec; rb[#rb + 1] = 1
  end
  if ok and ARGV[a + 5] ~= '1' then rb, tb = {}, {} end
  out[i + 1] = {ok and 1 or 0, sec, used, rb, tb}
end
return out
"""

WRITE = """
local p = ARGV[1]
if not redis.call('SET', p .. 'batch:' .. ARGV[2], '1', 'NX', 'EX', 86400) then return 0 end
local b = cjson.decode(ARGV[3])
local sec = tonumber(redis.call('TIME')[1])
local names = {'r', 'p', 'c', 'e'}
for _, u in ipairs(b.rows) do
  local k = p .. 'usage:' .. u[1]
  for i = 1, 4 do
    if u[i + 2] ~= 0 then redis.call('HINCRBY', k, u[2] .. '\\t' .. names[i], u[i + 2]) end
  end
  redis.call('EXPIRE', k, ARGV[4])
end
for _, m in ipairs(b.month) do
  redis.call('HINCRBY', p .. 'month:' .. m[1], m[2], m[3])
  redis.call('EXPIRE', p .. 'month:' .. m[1], 40 * 86400)
end
for _, w in ipairs(b.window) do
  redis.call('HINCRBY', p .. 'win:' .. w[1] .. ':t', sec, w[2])
  redis.call('EXPIRE', p .. 'win:' .. w[1] .. ':t', 61)
end
for _, m in ipairs(b.minutes) do
  redis.call('HINCRBY', p .. 'min:' .. m[1], m[2], m[3])
  redis.call('EXPIRE', p .. 'min:' .. m[1], 3660)
end
return 1
"""


def redacted(url: str) -> str:
    """The URL without its password, for logs and /admin/keys."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisStore:
    shared = True

    def __init__(self, url: str, timeout: float) -> None:
        self.url = redacted(url)
        # The keeper bounds each call by `timeout` too. One retry at once, on a new connection: after a
        # store restart every pooled connection is dead, and only that retry tells a dead connection
        # from a dead store. A store that is down fails both at once (refused): local counting at once.
        # The password from the environment (a Secret in the chart) rather than the command line.
        password = None if urlsplit(url).password else os.environ.get("ROUNDHOUSE_STATE_PASSWORD") or None
        self.client = aioredis.Redis.from_url(url, password=password, socket_timeout=timeout,
                                              socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 1),
                                              health_check_interval=0)  # fmt: skip
        self.timeout = timeout
        self._admit = self.client.register_script(ADMIT)
        self._queued: list[tuple[Identity, str, bool, int, asyncio.Future[Any]]] = []
        self._busy = False  # a call of the admission script is on its way
        self._encoded: dict[tuple[Identity, str], tuple[tuple[bytes, ...], tuple[bytes, ...]]] = {}
        self._conn: Any = None  # the admissions' own connection (redis.asyncio.Connection)
        self._sending: set[asyncio.Task[None]] = set()
        self._write = self.client.register_script(WRITE)

    def load(self) -> Loaded:
        return Loaded()  # read on demand: other replicas write too

    async def admit(self, who: Identity, month: str, details: bool, unwritten: int = 0) -> Counts:
        """One admission. One call of the script at a time, on a connection of its own; what arrives
        meanwhile goes in the next call: a call through the client's pool costs ~90 us of CPU, and an
        admission in a batch a few (docs/benchmarks.md)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append((who, month, details, unwritten, future))
        if not self._busy:
            self._busy = True
            asyncio.get_running_loop().call_soon(self._start)  # next turn: with the rest of this one's
        answer = await future
        try:
            ok, sec, used, rb, tb = answer
            return Counts(bool(ok), float(sec), int(used), [int(x) for x in rb], [int(x) for x in tb])
        except (TypeError, ValueError):  # not the script's answer (another script under our name?)
            raise StoreError(f"unexpected answer to the admission script: {answer!r:.200}") from None

    def _start(self) -> None:
        task = asyncio.get_running_loop().create_task(self._lane())
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _lane(self) -> None:
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                await self._send(batch)
        finally:
            self._busy = False

    async def _send(self, batch: list[tuple[Identity, str, bool, int, asyncio.Future[Any]]]) -> None:
        keys: list[bytes] = []
        args: list[bytes] = []
        for who, month, details, unwritten, _ in batch:
            found = self._encoded.get((who, month))
            if found is None:  # a key's names and limits, encoded once (the client's encoder is per argument)
                if len(self._encoded) > 20000:  # identities of key files reloaded since: start again
                    self._encoded.clear()
                found = self._encoded[(who, month)] = _encode(who, month)
            keys += found[0]
            name, rpm, tpm, budget = found[1]
            if unwritten and who.monthly_token_budget is not None:  # what is left once they are counted
                budget = b"%d" % (who.monthly_token_budget - unwritten)
            args += (name, rpm, tpm, budget, b"1" if details else b"0")
        try:
            answers = await self._call("EVALSHA", self._admit.sha, len(keys), *keys, *args)
        except StoreError as err:
            answers = [err] * len(batch)
        except Exception as err:  # whatever it is, the requests waiting on this call get an answer
            answers = [StoreError(f"{type(err).__name__}: {err}")] * len(batch)
        for (*_, future), answer in zip(batch, answers, strict=True):
            if future.done():  # its caller gave up (the keeper's timeout)
                continue
            if isinstance(answer, StoreError):
                future.set_exception(answer)
            else:
                future.set_result(answer)

    async def _call(self, *command: Any) -> Any:
        """One command on the admissions' own connection, within the timeout (all of it: a reconnect
        and a reload share it). A connection that was used before and fails is tried once more new (a
        restarted store closed it); a store that forgot the script (restarted, or SCRIPT FLUSH) is given
        it again on that connection, once. Every failure is a StoreError: the admissions waiting on
        this call are answered, never left hanging."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self._attempts(command)
        except (RedisError, OSError, TimeoutError) as err:
            if self._conn is not None:
                await self._drop(self._conn)
            raise StoreError(f"{type(err).__name__}: {err}") from None

    async def _attempts(self, command: tuple[Any, ...]) -> Any:
        retried = loaded = False
        while True:
            conn, fresh = self._conn, self._conn is None
            if conn is None:
                conn = self._conn = self.client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
            try:
                if fresh:
                    await conn.connect()
                return await _exchange(conn, command)
            except NoScriptError:
                if loaded:
                    raise StoreError("the store refused the admission script") from None
                loaded = True
                await _exchange(conn, ("SCRIPT", "LOAD", ADMIT))
            except (RedisError, OSError):
                if fresh or retried:
                    raise
                await self._drop(conn)
                retried = True

    async def _drop(self, conn: Any) -> None:
        self._conn = None
        await conn.disconnect()  # a late answer must never be read as the next call's

    async def write(self, batch: Batch) -> None:
        doc = {
            "rows": [[day, SEP.join((k, m, e)), r.requests, r.prompt_tokens, r.completion_tokens, r.errors]
                     for (k, m, e, day), r in batch.rows.items()],
            "month": [[m, k, n] for (m, k), n in batch.month.items()],
            "window": [[k, n] for k, n in batch.window.items()],
            "minutes": [[m, k, n] for (m, k), n in batch.minutes.items()],
        }  # fmt: skip
        metrics.STATE_ROUND_TRIPS.inc()
        try:
            await self._write([], [PREFIX, batch.id, json.dumps(doc), str((DAYS_KEPT + 1) * 86400)])
        except RedisError as err:
            raise StoreError(f"{type(err).__name__}: {err}") from None

    async def read(self, days: list[str], minutes: list[int], month: str) -> Loaded:
        """Usage rows of `days`, the series of `minutes` and `month`'s tokens, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for d in days:
            pipe.hgetall(f"{PREFIX}usage:{d}")
        for m in minutes:
            pipe.hgetall(f"{PREFIX}min:{m}")
        pipe.hgetall(f"{PREFIX}month:{month}")
        metrics.STATE_ROUND_TRIPS.inc()
        try:
            answers = await pipe.execute()
        except RedisError as err:
            raise StoreError(f"{type(err).__name__}: {err}") from None
        out = Loaded()
        for day, fields in zip(days, answers, strict=False):
            for field, value in fields.items():
                parts = field.decode(errors="replace").split(SEP)
                if len(parts) != 4 or parts[3] not in FIELDS:
                    continue  # not a field of ours
                key, model, engine, what = parts
                row = out.rows.get((key, model, engine, day))
                if row is None:
                    row = out.rows[(key, model, engine, day)] = Row()
                setattr(row, FIELDS[what], int(value))
        for minute, fields in zip(minutes, answers[len(days) :], strict=False):
            for key, value in fields.items():
                out.minutes[(minute, key.decode())] = int(value)
        out.month = {(month, k.decode()): int(v) for k, v in answers[-1].items()}
        return out

    async def ping(self) -> None:
        metrics.STATE_ROUND_TRIPS.inc()
        try:
            await self.client.ping()
        except RedisError as err:
            raise StoreError(f"{type(err).__name__}: {err}") from None

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.disconnect()
        await self.client.aclose()


async def _exchange(conn: Any, command: tuple[Any, ...]) -> Any:
    """Send one command and read its answer; a round trip, counted (an error answer is one too)."""
    # redis-py's asyncio connection packs a command in Python: a quarter of an admission batch's CPU at 8
    # in flight (bench/state_admission.py). hiredis (its parser, already here) packs it in C.
    await conn.send_packed_command([hiredis.pack_command(command)], check_health=False)
    try:
        return await conn.read_response()
    finally:
        metrics.STATE_ROUND_TRIPS.inc()


FIELDS = {"r": "requests", "p": "prompt_tokens", "c": "completion_tokens", "e": "errors"}


def _encode(who: Identity, month: str) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """The admission script's keys and arguments for `who` this month (an empty limit: none)."""
    name = who.name
    keys = (f"{PREFIX}win:{name}:r", f"{PREFIX}win:{name}:t", f"{PREFIX}month:{month}")
    limits = (who.requests_per_minute, who.tokens_per_minute, who.monthly_token_budget)
    return tuple(k.encode() for k in keys), (name.encode(), *(b"" if n is None else b"%d" % n for n in limits))

"""The gateway's side of its state store: decides with it, counts locally when it is away, and writes the
counts of an outage back when it returns.

Admission costs one store round trip for a key with limits (none for a key without, none with an
embedded store); accounting never waits on the store: it adds to a batch written in the background.
A store call that fails or takes longer than `timeout` marks the store degraded: from then on the
gateway decides with its own counts (`open`) or answers 503 (`closed`) until a background call
succeeds again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from roundhouse_gateway import metrics
from roundhouse_gateway.http.wire import ClientError
from roundhouse_gateway.keys.keys import Identity
from roundhouse_gateway.keys.limits import Limiter, Refusal, Verdict, Window, headers_of, month_of, refusal_of
from roundhouse_gateway.keys.usage import DAYS_KEPT, MINUTES_KEPT, Row, Usage, day_of
from roundhouse_gateway.state.sqlite_store import SqliteStore
from roundhouse_gateway.state.store import Batch, Counts, Loaded, Store, StoreError

log = logging.getLogger("roundhouse.gateway.state")
OnFailure = Literal["open", "closed"]
UNAVAILABLE = ("The gateway cannot reach its state store (limits, budgets and usage) and is set to refuse requests"
               " until it is back (gateway.state.onFailure: closed). Please retry shortly.")  # fmt: skip


@dataclass
class Health:
    degraded_since: float | None = None  # wall time of the first failed call of this outage
    error: str | None = None


class Keeper:
    """Limits, budgets and usage over a store (None: this replica's memory only, as before)."""

    def __init__(self, store: Store | None = None, on_failure: OnFailure = "open", timeout: float = 0.25,
                 interval: float | None = None) -> None:  # fmt: skip
        self.store, self.on_failure, self.timeout = store, on_failure, timeout
        self.shared = store is not None and store.shared
        # Shared: a budget spent through one replica is seen by the others within this. Embedded: a
        # crash loses at most this much of the counts.
        self.interval = interval if interval is not None else 0.2 if self.shared else 1.0
        self.limiter = Limiter()
        self.usage = Usage()
        self.pending = Batch()
        self.unwritten: list[Batch] = []  # sent and not acknowledged: sent again, under the same id
        self.health = Health()
        metrics.STATE_DEGRADED.set(0)
        if store is not None:
            self._restore(store.load())

    def _restore(self, loaded: Loaded) -> None:
        """Count on from what an embedded store kept (Prometheus' totals start again: they are this
        process's counters)."""
        self.usage.rows.update(loaded.rows)
        wall = time.time()
        for (minute, key), n in sorted(loaded.minutes.items()):
            self.usage.add_minute(key, n, minute * 60.0)
        for (month, key), n in loaded.month.items():
            if month == month_of(wall):
                self.limiter.seen(key, n, wall)
        self.limiter.restore(loaded.windows, wall - time.monotonic())

    @property
    def degraded(self) -> bool:
        return self.health.degraded_since is not None

    # --- the request path ----------------------------------------------------------------------
    async def admit(self, who: Identity, headers: bool) -> Verdict:
        """Whether `who` may send one more request, counted if so: in the shared store when there is one
        and it answers, else in this replica's memory (or 503 with onFailure closed)."""
        if self.degraded and self.on_failure == "closed":
            raise ClientError(503, UNAVAILABLE, "state_store_unavailable", None, "service_unavailable",
                              {"Retry-After": "1"})  # fmt: skip
        if not who.limited:
            return Verdict()
        wall = time.time()
        if self.shared and not self.degraded:
            assert self.store is not None
            month = month_of(wall)
            # Tokens this replica counted and has not written yet: the budget is judged with them too.
            unwritten = self._unwritten_tokens(month, who.name) if who.monthly_token_budget is not None else 0
            try:
                # The store bounds each of its calls by the timeout (a request waits for the call on
                # its way, then its own: twice the timeout at most); no timer of its own a request.
                counts = await self.store.admit(who, month, headers, unwritten)
            except (StoreError, TimeoutError) as err:
                self._failed("admit", err)
                return await self.admit(who, headers)  # decided locally, or refused when closed
            metrics.child(metrics.STATE_CALLS, "admit", "ok").inc()
            counts.month_tokens += unwritten
            self.limiter.seen(who.name, counts.month_tokens, wall)  # what it counts on from if the store goes
            return verdict(who, counts, wall, headers)
        return self.limiter.admit(who, time.monotonic(), wall, headers)

    def charge(self, who: Identity, model: str, engine: str, status: int, prompt: int, completion: int) -> None:
        """Count what a request used: in memory now, in the store with the next batch."""
        wall = time.time()
        self.usage.record(who.name, model, engine, status, prompt, completion, wall)
        self.limiter.spend(who, prompt + completion, time.monotonic(), wall)
        if self.store is not None:
            self.pending.add(who, (who.name, model, engine, day_of(wall)), status, prompt, completion,
                             month_of(wall), int(wall // 60))  # fmt: skip

    def _unwritten_tokens(self, month: str, name: str) -> int:
        return sum(b.month.get((month, name), 0) for b in (*self.unwritten, self.pending))

    # --- the background ------------------------------------------------------------------------
    async def run(self) -> None:
        """Write the counts every `interval` until cancelled; while degraded, also look for the store."""
        if self.store is None:
            return
        while True:
            await asyncio.sleep(self.interval if not self.degraded else max(self.interval, 0.5))
            try:
                await self.flush()
            except Exception as err:  # a bug of ours: logged, and the counts stay for the next try
                log.exception("state store write failed", extra={"error": str(err)})

    async def flush(self) -> bool:
        """Write every batch not yet written, oldest first; True if the store has them all."""
        if self.store is None:
            return True
        try:
            if self.degraded:  # one ping a tick while the store is away; the outage's counts wait in one batch
                await self._call("ping", self.store.ping())
            if self.pending:
                self.unwritten.append(self.pending)
                self.pending = Batch()
            while self.unwritten:
                await self._call("write", self.store.write(self.unwritten[0]))
                self.unwritten.pop(0)
        except (StoreError, TimeoutError) as err:
            self._failed("write", err)
            return False
        finally:
            metrics.STATE_UNWRITTEN.set(len(self.unwritten))
        if self.degraded:
            since = self.health.degraded_since or 0.0
            log.warning("state store back", extra={"store": self.store.url, "outage_s": round(time.time() - since, 3)})
            self.health = Health()
            metrics.STATE_DEGRADED.set(0)
        return True

    async def _call(self, op: str, call: Any) -> None:
        await asyncio.wait_for(call, self.timeout if self.shared else None)
        metrics.child(metrics.STATE_CALLS, op, "ok").inc()

    def _failed(self, op: str, err: BaseException) -> None:
        metrics.child(metrics.STATE_CALLS, op, "error").inc()
        error = str(err) or type(err).__name__
        if not self.degraded:
            log.error("state store unreachable: counting locally" if self.on_failure == "open"
                      else "state store unreachable: refusing requests (onFailure closed)",
                      extra={"store": self.store.url if self.store else None, "error": error})  # fmt: skip
            self.health = Health(time.time(), error)
            metrics.STATE_DEGRADED.set(1)
        else:
            self.health.error = error

    async def close(self) -> None:
        """Write what is left (a last try, bounded by the timeout) and let go of the store."""
        if self.store is None:
            return
        if not await self.flush():
            log.error("state store unreachable at shutdown: counts not written",
                      extra={"batches": len(self.unwritten)})  # fmt: skip
        if isinstance(self.store, SqliteStore):  # a rollout keeps the per-minute windows too
            now = time.monotonic()
            self.store.save_windows(self.limiter.windows(now, time.time() - now))
        await self.store.close()

    # --- what the admin API reads --------------------------------------------------------------
    async def report(self, wall: float, key: str | None, day: str | None) -> dict[str, Any]:
        """/admin/usage: from the shared store (what every replica counted, plus this one's unwritten
        counts), or this replica's memory (embedded store, or a shared one that does not answer)."""
        loaded = await self._read(wall)
        if loaded is None:
            return {**self.usage.report(wall, key, day), **self.scope()}
        view = Usage()
        view.rows.update(loaded.rows)
        for b in (*self.unwritten, self.pending):
            for rk, r in b.rows.items():
                add_row(view.rows.setdefault(rk, Row()), r)
        minutes = dict(loaded.minutes)
        for b in (*self.unwritten, self.pending):
            for mk, n in b.minutes.items():
                minutes[mk] = minutes.get(mk, 0) + n
        for (minute, name), n in sorted(minutes.items()):
            view.add_minute(name, n, minute * 60.0)
        return {**view.report(wall, key, day), **self.scope()}

    async def month_used(self, names: list[str], wall: float) -> dict[str, int]:
        """This month's tokens per key name, as /admin/keys shows them."""
        month = month_of(wall)
        loaded = await self._read(wall, days=False)
        if loaded is None:
            return {n: self.limiter.month_used(n, wall) for n in names}
        return {n: loaded.month.get((month, n), 0) + self._unwritten_tokens(month, n) for n in names}

    async def _read(self, wall: float, days: bool = True) -> Loaded | None:
        if not self.shared or self.degraded or self.store is None:
            return None
        today = datetime.fromtimestamp(wall, UTC).toordinal()
        names = [datetime.fromordinal(today - i).strftime("%Y-%m-%d") for i in range(DAYS_KEPT)] if days else []
        now = int(wall // 60)
        minutes = list(range(now - MINUTES_KEPT + 1, now + 1)) if days else []
        try:
            loaded: Loaded = await asyncio.wait_for(self.store.read(names, minutes, month_of(wall)), self.timeout)
        except (StoreError, TimeoutError) as err:
            self._failed("read", err)
            return None
        metrics.child(metrics.STATE_CALLS, "read", "ok").inc()
        return loaded

    def scope(self) -> dict[str, Any]:
        """Where the counts shown come from: `store` (every replica's) or `replica` (this one's)."""
        shared = self.shared and not self.degraded
        since = self.health.degraded_since
        return {
            "limitsScope": "store" if shared else "replica",
            "state": {"store": self.store.url if self.store else "memory", "shared": self.shared,
                      "onFailure": self.on_failure, "degraded": self.degraded,
                      "degradedSince": datetime.fromtimestamp(since, UTC).isoformat() if since else None,
                      "error": self.health.error, "unwrittenBatches": len(self.unwritten) + bool(self.pending)},
        }  # fmt: skip


def verdict(who: Identity, c: Counts, wall: float, headers: bool) -> Verdict:
    """The store's answer as the local limiter's: the same refusals and headers from the windows it saw."""
    if c.admitted and not headers:
        return Verdict()
    requests, tokens = Window.of(int(c.now), c.requests), Window.of(int(c.now), c.tokens)
    if c.admitted:
        return Verdict(None, headers_of(who, requests, tokens, c.now))
    refusal = refusal_of(who, requests, tokens, c.month_tokens, c.now, wall)
    if refusal is None:  # not expected (the same counts, the same rules); the store's decision holds
        refusal = Refusal("requests", "rate_limit_exceeded", f"Rate limit reached for key `{who.name}`."
                          " Please try again in 1s.", 1)  # fmt: skip
    return Verdict(refusal, headers_of(who, requests, tokens, c.now))


def add_row(into: Row, r: Row) -> None:
    into.requests += r.requests
    into.prompt_tokens += r.prompt_tokens
    into.completion_tokens += r.completion_tokens
    into.errors += r.errors

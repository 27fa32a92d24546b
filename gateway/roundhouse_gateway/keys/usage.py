"""Usage per key name (never the key): requests, tokens and errors by key, model, engine and day,
plus a per-minute series of the last hour for the admin page's chart. In memory: what this replica
counted (and, with an embedded store, what it counted before a restart); roundhouse_gateway.state keeps
them in the store."""

from __future__ import annotations

from collections import deque
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

DAYS_KEPT = 35  # a month of rows and a few days' grace
MINUTES_KEPT = 60


_DAY: list[Any] = [0.0, ""]  # [start, "YYYY-MM-DD"] of the last day asked for


def day_of(wall: float) -> str:
    """The UTC day of `wall` (remembered: formatting a date on every request costs microseconds)."""
    if _DAY[0] <= wall < _DAY[0] + 86400:
        return _DAY[1]  # type: ignore[no-any-return]
    start = wall - wall % 86400  # UTC days are 86,400 s: leap seconds are not counted in epoch time
    _DAY[:] = [start, datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d")]
    return _DAY[1]  # type: ignore[no-any-return]


@dataclass
class Row:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0


@dataclass
class Usage:
    rows: dict[tuple[str, str, str, str], Row] = field(default_factory=dict)  # (key, model, engine, day)
    minutes: deque[tuple[int, dict[str, int]]] = field(default_factory=deque)  # (epoch minute, tokens by key)
    totals: dict[tuple[str, str], Row] = field(default_factory=dict)  # (key, model), since the start
    errors: dict[tuple[str, str, int], int] = field(default_factory=dict)  # (key, model, status)

    def record(self, key: str, model: str, engine: str, status: int, prompt: int, completion: int,
               wall: float) -> None:  # fmt: skip
        """One answered request of `key` (model and engine are catalog names, or "" when none served it)."""
        day = day_of(wall)
        row = self.rows.get((key, model, engine, day))
        if row is None:
            row = self.rows[(key, model, engine, day)] = Row()
            self._prune(day)
        row.requests += 1
        row.prompt_tokens += prompt
        row.completion_tokens += completion
        error = status >= 400
        row.errors += error
        # What Prometheus reads (metrics.KeyUsage, at scrape time): plain counts here, no metric
        # objects on the request path. Never pruned: bounded by key names x served models.
        total = self.totals.get((key, model))
        if total is None:
            total = self.totals[(key, model)] = Row()
        total.requests += 1
        total.prompt_tokens += prompt
        total.completion_tokens += completion
        if error:
            self.errors[(key, model, status)] = self.errors.get((key, model, status), 0) + 1
        if prompt or completion:
            self.add_minute(key, prompt + completion, wall)

    def add_minute(self, key: str, tokens: int, wall: float) -> None:
        """Count `tokens` of `key` in the minute of `wall` (the last hour is kept, oldest first)."""
        minute = int(wall // 60)
        if not self.minutes or self.minutes[-1][0] != minute:
            self.minutes.append((minute, {}))
            while self.minutes and self.minutes[0][0] <= minute - MINUTES_KEPT:
                self.minutes.popleft()
        by_key = self.minutes[-1][1]
        by_key[key] = by_key.get(key, 0) + tokens

    def _prune(self, today: str) -> None:
        cutoff = datetime.fromisoformat(today).toordinal() - DAYS_KEPT
        for k in [k for k in self.rows if datetime.fromisoformat(k[3]).toordinal() < cutoff]:
            del self.rows[k]

    def report(self, wall: float, key: str | None = None, day: str | None = None) -> dict[str, Any]:
        """What GET /admin/usage answers: rows (optionally one key's or one day's), totals per key, and
        tokens per minute over the last hour, oldest first, one entry per minute (zeros included)."""
        rows: list[dict[str, Any]] = [
            {"key": k, "model": m, "engine": e, "day": d, "requests": r.requests, "promptTokens": r.prompt_tokens,
             "completionTokens": r.completion_tokens, "errors": r.errors}
            for (k, m, e, d), r in sorted(self.rows.items())
            if (key is None or k == key) and (day is None or d == day)
        ]  # fmt: skip
        totals: dict[str, dict[str, int]] = {}
        for r in rows:
            t = totals.setdefault(r["key"], {"requests": 0, "promptTokens": 0, "completionTokens": 0, "errors": 0})
            for f in t:
                t[f] += r[f]
        now = int(wall // 60)
        seen = dict(self.minutes)
        series = [
            {"minute": datetime.fromtimestamp(m * 60, UTC).strftime("%Y-%m-%dT%H:%MZ"),
             "tokens": {k: n for k, n in seen.get(m, {}).items() if key is None or k == key}}
            for m in range(now - MINUTES_KEPT + 1, now + 1)
        ]  # fmt: skip
        return {"rows": rows, "totals": totals, "tokensPerMinute": series}


@dataclass
class Call:
    """What one request used, filled in as it goes: read by the accounting at its end."""

    key: str = ""  # the key's name; "" when authentication is off
    model: str = ""
    engine: str = ""
    status: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    strip_usage: bool = False  # the gateway asked the engine for a usage chunk the client did not want
    headers: list[tuple[bytes, bytes]] | None = None  # x-ratelimit-*, for every answer to this request


CALL: ContextVar[Call | None] = ContextVar("roundhouse_call", default=None)

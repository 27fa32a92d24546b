"""Per-key limits: requests and tokens per minute (sliding windows) and a monthly token budget.

Pure over an injected clock: `admit` decides before a request is routed, `spend` records the tokens
an engine reported after it answered. The Limiter counts in this replica's memory; a shared store
(roundhouse_gateway.state) decides atomically in the store and gives back the windows it saw, which
`refusal_of` and `headers_of` turn into the same answers.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from roundhouse_gateway.keys.keys import Identity

WINDOW = 60.0  # seconds: "per minute"


@dataclass(frozen=True)
class Refusal:
    """A 429 in OpenAI's shape: what ran out, the words, when to retry."""

    type: str  # requests | tokens | insufficient_quota
    code: str
    message: str
    retry_after: int


@dataclass
class Verdict:
    refusal: Refusal | None = None
    headers: list[tuple[bytes, bytes]] | None = None  # x-ratelimit-*, as OpenAI sends them (ASGI form)

    def named(self) -> dict[str, str]:
        """The headers by name, as str."""
        return {k.decode(): v.decode() for k, v in self.headers or []}


class Window:
    """Counts over the last 60 s in one-second buckets: constant memory and time whatever the rate (a
    log of every request held 170,000 entries at 2,900 requests/s, and the garbage collector walked
    them). Something counted in second s leaves the window at s + 60."""

    __slots__ = ("buckets", "last", "newest", "total")

    def __init__(self) -> None:
        self.buckets = [0] * int(WINDOW)
        self.newest = 0  # the second of the newest bucket
        self.last = 0  # the second something was last counted in
        self.total = 0

    @classmethod
    def of(cls, newest: int, counts: list[int]) -> Window:
        """A window as a store holds it: `counts` is second, count, second, count, ... within the last 60 s."""
        w = cls()
        w.newest = newest
        for i in range(0, len(counts) - 1, 2):
            second, n = counts[i], counts[i + 1]
            if newest - len(w.buckets) < second <= newest and n:
                w.buckets[second % len(w.buckets)] += n
                w.total += n
                w.last = max(w.last, second)
        return w

    def advance(self, now: float) -> None:
        second = int(now)
        if second <= self.newest:
            return
        if second - self.newest >= len(self.buckets):
            self.buckets = [0] * len(self.buckets)
            self.total = 0
        else:
            for s in range(self.newest + 1, second + 1):
                i = s % len(self.buckets)
                self.total -= self.buckets[i]
                self.buckets[i] = 0
        self.newest = second

    def add(self, now: float, n: int) -> None:
        self.advance(now)
        self.buckets[int(now) % len(self.buckets)] += n
        self.total += n
        self.last = int(now)

    def under_at(self, limit: int) -> float:
        """When the total will be under `limit` again, as buckets leave oldest first."""
        left = self.total
        for s in range(self.newest - len(self.buckets) + 1, self.newest + 1):
            left -= self.buckets[s % len(self.buckets)]
            if left < limit:
                return s + WINDOW
        return self.newest + WINDOW

    def empty_at(self) -> float:
        """When everything counted now has left the window."""
        return self.last + WINDOW if self.total else self.newest


@dataclass
class _State:
    requests: Window = field(default_factory=Window)
    tokens: Window = field(default_factory=Window)
    month: str = ""
    month_tokens: int = 0


def _older(w: Window, second: int, n: int) -> None:
    """Count `n` in an earlier second of the window than its newest."""
    w.buckets[second % len(w.buckets)] += n
    w.total += n
    w.last = max(w.last, second)


def duration(seconds: float) -> str:
    """OpenAI's reset format: 1s, 6m0s, 1h2m3s (milliseconds under a second: 250ms)."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    s = math.ceil(seconds)
    return _whole(s) if s <= 3600 else _format(s)


@functools.lru_cache(maxsize=4096)
def _whole(s: int) -> str:
    return _format(s)  # every answer to a limited key carries two: the same few strings, remembered


def _format(s: int) -> str:
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return (f"{h}h" if h else "") + (f"{m}m" if h or m else "") + f"{s}s"


_MONTH: list[Any] = [0.0, 0.0, ""]  # [start, end, "YYYY-MM"] of the last month asked for


def month_of(wall: float) -> str:
    """The UTC month of `wall`, "YYYY-MM" (remembered: formatting a date costs more than a limit check)."""
    start, end, name = _MONTH
    if start <= wall < end:
        return name  # type: ignore[no-any-return]
    now = datetime.fromtimestamp(wall, UTC)
    first = datetime(now.year, now.month, 1, tzinfo=UTC)
    _MONTH[:] = [first.timestamp(), next_month(wall).timestamp(), now.strftime("%Y-%m")]
    return _MONTH[2]  # type: ignore[no-any-return]


def next_month(wall: float) -> datetime:
    now = datetime.fromtimestamp(wall, UTC)
    return datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=UTC)


def _over(name: str, kind: str, unit: str, window: Window, limit: int | None, now: float,
          requested: str) -> Refusal | None:  # fmt: skip
    """The refusal for a per-minute limit that is reached (OpenAI's wording), or None."""
    if limit is None or window.total < limit:
        return None
    wait = window.under_at(limit) - now
    return Refusal(kind, "rate_limit_exceeded",
                   f"Rate limit reached for key `{name}` on {kind} per min ({unit}): Limit {limit},"
                   f" Used {window.total}{requested}. Please try again in {duration(wait)}.",
                   math.ceil(wait))  # fmt: skip


def refusal_of(who: Identity, requests: Window, tokens: Window, month_tokens: int, now: float,
               wall: float) -> Refusal | None:  # fmt: skip
    """Why `who` may not send one more request, given its windows and this month's tokens (None: it may).
    The order is the answer's: a spent budget first, then tokens, then requests."""
    return (_budget(who, month_tokens, wall)
            or _over(who.name, "tokens", "TPM", tokens, who.tokens_per_minute, now, "")
            or _over(who.name, "requests", "RPM", requests, who.requests_per_minute, now, ", Requested 1"))  # fmt: skip


def headers_of(who: Identity, requests: Window, tokens: Window, now: float) -> list[tuple[bytes, bytes]]:
    """The x-ratelimit-* headers of `who`'s per-minute limits, as OpenAI sends them (ASGI form)."""
    out: list[tuple[bytes, bytes]] = []
    for what, limit, window in ((b"requests", who.requests_per_minute, requests),
                                (b"tokens", who.tokens_per_minute, tokens)):  # fmt: skip
        if limit is not None:
            reset = duration(max(0.0, window.empty_at() - now)).encode()
            out += [(b"x-ratelimit-limit-" + what, b"%d" % limit),
                    (b"x-ratelimit-remaining-" + what, b"%d" % max(0, limit - window.total)),
                    (b"x-ratelimit-reset-" + what, reset)]  # fmt: skip
    return out


def _budget(who: Identity, used: int, wall: float) -> Refusal | None:
    budget = who.monthly_token_budget
    if budget is None or used < budget:
        return None
    resets = next_month(wall)
    return Refusal("insufficient_quota", "insufficient_quota",
                   f"Key `{who.name}` has used {used} of its monthly budget of {budget} tokens;"
                   f" the budget renews on {resets:%Y-%m-%d} (UTC).",
                   math.ceil(resets.timestamp() - wall))  # fmt: skip


class Limiter:
    """Every key's windows and month. `now` is monotonic seconds, `wall` epoch seconds."""

    def __init__(self) -> None:
        self.state: dict[str, _State] = {}

    def admit(self, who: Identity, now: float, wall: float, headers: bool = True) -> Verdict:
        """Whether `who` may send one more request now; counts it if so. The x-ratelimit-* headers
        come with a refusal always, with an admission when `headers` is set."""
        if not who.limited:
            return Verdict()
        st = self.state.get(who.name) or self.state.setdefault(who.name, _State())
        self._expire(st, now, wall)
        refusal = refusal_of(who, st.requests, st.tokens, st.month_tokens, now, wall)
        if refusal is None and who.requests_per_minute is not None:
            st.requests.add(now, 1)
        return Verdict(refusal, headers_of(who, st.requests, st.tokens, now) if headers or refusal else None)

    def spend(self, who: Identity, tokens: int, now: float, wall: float) -> None:
        """Count the tokens (prompt and completion) an engine reported for a request of `who`."""
        if tokens <= 0 or not who.limited:
            return
        st = self.state.get(who.name) or self.state.setdefault(who.name, _State())
        month = month_of(wall)
        if st.month != month:
            st.month, st.month_tokens = month, 0
        if who.tokens_per_minute is not None:
            st.tokens.add(now, tokens)  # moves the window itself
        st.month_tokens += tokens

    def seen(self, name: str, month_tokens: int, wall: float) -> None:
        """This month's tokens of `name` as the shared store last counted them: what a store outage
        counts on from."""
        st = self.state.get(name) or self.state.setdefault(name, _State())
        st.month, st.month_tokens = month_of(wall), month_tokens

    def windows(self, now: float, offset: float) -> list[tuple[str, str, int, int]]:
        """Every count in the per-minute windows as (key, "requests" or "tokens", epoch second, count):
        what a restart puts back. `offset`: epoch time minus the monotonic clock `now` is on."""
        out = []
        for name, st in self.state.items():
            for kind, w in (("requests", st.requests), ("tokens", st.tokens)):
                w.advance(now)
                for second in range(w.newest - len(w.buckets) + 1, w.newest + 1):
                    if n := w.buckets[second % len(w.buckets)]:
                        out.append((name, kind, round(second + offset), n))
        return out

    def restore(self, counts: list[tuple[str, str, int, int]], offset: float) -> None:
        """Put back what `windows` gave before a restart (`offset` is this process's); what has left
        the window since is dropped by the next look."""
        for name, kind, second, n in sorted(counts, key=lambda c: c[2]):
            st = self.state.get(name) or self.state.setdefault(name, _State())
            w = st.requests if kind == "requests" else st.tokens
            mono = round(second - offset)
            if mono >= w.newest:
                w.add(mono, n)
            elif mono > w.newest - len(w.buckets):  # older than the window's newest, not yet gone
                _older(w, mono, n)

    def month_used(self, name: str, wall: float) -> int:
        st = self.state.get(name)
        return st.month_tokens if st is not None and st.month == month_of(wall) else 0

    @staticmethod
    def _expire(st: _State, now: float, wall: float) -> None:
        st.requests.advance(now)
        st.tokens.advance(now)
        month = month_of(wall)
        if st.month != month:
            st.month, st.month_tokens = month, 0

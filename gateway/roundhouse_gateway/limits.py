"""Per-key limits: requests and tokens per minute (sliding windows) and a monthly token budget.

Pure over an injected clock: `admit` decides before a request is routed, `spend` records the tokens
an engine reported after it answered. State lives in this gateway replica only (docs/keys.md):
with several replicas each one counts what it served.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .keys import Identity

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
    headers: dict[str, str] = field(default_factory=dict)  # x-ratelimit-*, as OpenAI sends them


@dataclass
class _State:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    tokens_sum: int = 0  # of `tokens`, kept as they come and go: admit() is on every request's path
    month: str = ""
    month_tokens: int = 0


def duration(seconds: float) -> str:
    """OpenAI's reset format: 1s, 6m0s, 1h2m3s (milliseconds under a second: 250ms)."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    s = math.ceil(seconds)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return (f"{h}h" if h else "") + (f"{m}m" if h or m else "") + f"{s}s"


def month_of(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m")


def next_month(wall: float) -> datetime:
    now = datetime.fromtimestamp(wall, UTC)
    return datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=UTC)


class Limiter:
    """Every key's windows and month. `now` is monotonic seconds, `wall` epoch seconds."""

    def __init__(self) -> None:
        self.state: dict[str, _State] = {}

    def admit(self, who: Identity, now: float, wall: float) -> Verdict:
        """Whether `who` may send one more request now; counts it if so."""
        if not who.limited:
            return Verdict()
        st = self.state.setdefault(who.name, _State())
        self._expire(st, now, wall)
        headers: dict[str, str] = {}
        refusal = self._budget(who, st, wall)
        rpm, tpm = who.requests_per_minute, who.tokens_per_minute
        if tpm is not None:
            used = st.tokens_sum
            headers |= {
                "x-ratelimit-limit-tokens": str(tpm),
                "x-ratelimit-remaining-tokens": str(max(0, tpm - used)),
                "x-ratelimit-reset-tokens": duration(st.tokens[-1][0] + WINDOW - now if st.tokens else 0),
            }
            if refusal is None and used >= tpm:
                wait = self._tokens_free_at(st, tpm) - now
                refusal = Refusal("tokens", "rate_limit_exceeded",
                                  f"Rate limit reached for key `{who.name}` on tokens per min (TPM): Limit {tpm},"
                                  f" Used {used}. Please try again in {duration(wait)}.", math.ceil(wait))  # fmt: skip
        if rpm is not None:
            full = len(st.requests) >= rpm
            if refusal is None and full:
                wait = st.requests[0] + WINDOW - now
                refusal = Refusal("requests", "rate_limit_exceeded",
                                  f"Rate limit reached for key `{who.name}` on requests per min (RPM): Limit {rpm},"
                                  f" Used {len(st.requests)}, Requested 1. Please try again in {duration(wait)}.",
                                  math.ceil(wait))  # fmt: skip
            if refusal is None:
                st.requests.append(now)
            headers |= {
                "x-ratelimit-limit-requests": str(rpm),
                "x-ratelimit-remaining-requests": str(max(0, rpm - len(st.requests))),
                "x-ratelimit-reset-requests": duration(st.requests[-1] + WINDOW - now if st.requests else 0),
            }
        return Verdict(refusal, headers)

    def spend(self, who: Identity, tokens: int, now: float, wall: float) -> None:
        """Count the tokens (prompt and completion) an engine reported for a request of `who`."""
        if tokens <= 0 or not who.limited:
            return
        st = self.state.setdefault(who.name, _State())
        self._expire(st, now, wall)
        if who.tokens_per_minute is not None:
            st.tokens.append((now, tokens))
            st.tokens_sum += tokens
        st.month_tokens += tokens

    def month_used(self, name: str, wall: float) -> int:
        st = self.state.get(name)
        return st.month_tokens if st is not None and st.month == month_of(wall) else 0

    @staticmethod
    def _expire(st: _State, now: float, wall: float) -> None:
        while st.requests and st.requests[0] <= now - WINDOW:
            st.requests.popleft()
        while st.tokens and st.tokens[0][0] <= now - WINDOW:
            st.tokens_sum -= st.tokens.popleft()[1]
        month = month_of(wall)
        if st.month != month:
            st.month, st.month_tokens = month, 0

    @staticmethod
    def _tokens_free_at(st: _State, tpm: int) -> float:
        """When enough of the window's tokens have aged out to be under the limit again."""
        used = st.tokens_sum
        for t, n in st.tokens:
            used -= n
            if used < tpm:
                return t + WINDOW
        return st.tokens[-1][0] + WINDOW

    @staticmethod
    def _budget(who: Identity, st: _State, wall: float) -> Refusal | None:
        budget = who.monthly_token_budget
        if budget is None or st.month_tokens < budget:
            return None
        resets = next_month(wall)
        return Refusal("insufficient_quota", "insufficient_quota",
                       f"Key `{who.name}` has used {st.month_tokens} of its monthly budget of {budget} tokens;"
                       f" the budget renews on {resets:%Y-%m-%d} (UTC).",
                       math.ceil(resets.timestamp() - wall))  # fmt: skip

"""The state store's interface and the batch of counts the gateway writes to it.

The request path never waits on a write: `account` adds to a Batch, and the keeper writes batches in
the background, each under an id, so a batch sent again after a lost answer is counted once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Protocol

from roundhouse_gateway.keys.keys import Identity
from roundhouse_gateway.keys.usage import Row

RowKey = tuple[str, str, str, str]  # (key name, model, engine, day)


class StoreError(Exception):
    """The store did not answer in time, or answered with an error."""


@dataclass
class Counts:
    """What a shared store saw when it admitted (or refused) one request: its clock, the key's windows
    (second, count, second, count, ...) and this month's tokens. The windows count the request if it
    was admitted."""

    admitted: bool
    now: float
    month_tokens: int
    requests: list[int]
    tokens: list[int]


@dataclass
class Batch:
    """Counts not yet in the store: usage rows, this month's tokens, tokens for the per-minute windows
    and the per-minute series of the Usage tab."""

    id: str = field(default_factory=lambda: os.urandom(12).hex())
    rows: dict[RowKey, Row] = field(default_factory=dict)
    month: dict[tuple[str, str], int] = field(default_factory=dict)  # (YYYY-MM, key) -> tokens
    window: dict[str, int] = field(default_factory=dict)  # key -> tokens, for keys with tokensPerMinute
    minutes: dict[tuple[int, str], int] = field(default_factory=dict)  # (epoch minute, key) -> tokens

    def __bool__(self) -> bool:
        return bool(self.rows or self.month or self.window or self.minutes)

    def add(self, who: Identity, row: RowKey, status: int, prompt: int, completion: int, month: str,
            minute: int) -> None:  # fmt: skip
        r = self.rows.get(row)
        if r is None:
            r = self.rows[row] = Row()
        r.requests += 1
        r.prompt_tokens += prompt
        r.completion_tokens += completion
        r.errors += status >= 400
        tokens = prompt + completion
        if tokens:
            self.month[(month, who.name)] = self.month.get((month, who.name), 0) + tokens
            self.minutes[(minute, who.name)] = self.minutes.get((minute, who.name), 0) + tokens
            if who.tokens_per_minute is not None:
                self.window[who.name] = self.window.get(who.name, 0) + tokens


@dataclass
class Loaded:
    """What an embedded store holds at start: the gateway counts on from it."""

    rows: dict[RowKey, Row] = field(default_factory=dict)
    month: dict[tuple[str, str], int] = field(default_factory=dict)
    minutes: dict[tuple[int, str], int] = field(default_factory=dict)
    windows: list[tuple[str, str, int, int]] = field(default_factory=list)  # (key, kind, epoch second, count)


class Store(Protocol):
    """A place for the counts. `shared`: several gateways use it at once, so the per-key windows live
    there and `admit` decides in it; otherwise each gateway decides in memory and the store keeps what
    it counted (`load` at start, `write` every second)."""

    shared: bool
    url: str  # for /admin/keys, without a password

    def load(self) -> Loaded: ...

    async def admit(self, who: Identity, month: str, details: bool, unwritten: int = 0) -> Counts:
        """Admit one request of `who` or refuse it, atomically; `unwritten`: tokens of this month not yet
        written, counted against the budget too. StoreError when a store call fails or takes longer than
        the timeout."""
        ...

    async def write(self, batch: Batch) -> None: ...

    async def read(self, days: list[str], minutes: list[int], month: str) -> Loaded: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...

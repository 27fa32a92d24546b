"""The embedded store: one SQLite file for one gateway. The gateway decides in memory and writes what it
counted every second, so a crash loses at most the last second of counts; a restart loads the month's
tokens, the usage rows and the last hour's series back."""

from __future__ import annotations

import asyncio
import fcntl
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

from roundhouse_gateway import metrics
from roundhouse_gateway.keys.keys import Identity
from roundhouse_gateway.keys.usage import DAYS_KEPT, MINUTES_KEPT, Row
from roundhouse_gateway.state.store import Batch, Counts, Loaded, StoreError

SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (key TEXT, model TEXT, engine TEXT, day TEXT, requests INTEGER,
  prompt_tokens INTEGER, completion_tokens INTEGER, errors INTEGER, PRIMARY KEY (key, model, engine, day));
CREATE TABLE IF NOT EXISTS month (month TEXT, key TEXT, tokens INTEGER, PRIMARY KEY (month, key));
CREATE TABLE IF NOT EXISTS minutes (minute INTEGER, key TEXT, tokens INTEGER, PRIMARY KEY (minute, key));
CREATE TABLE IF NOT EXISTS batches (id TEXT PRIMARY KEY, written REAL);
CREATE TABLE IF NOT EXISTS windows (key TEXT, kind TEXT, second INTEGER, count INTEGER);
"""


class SqliteStore:
    shared = False

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.url = f"sqlite://{path}"
        # One gateway a file: each decides from what it loaded, so two would each count the other's
        # requests again at their next start. Released when the process ends, however it ends.
        self.lock = open(path.with_name(path.name + ".lock"), "w")  # noqa: SIM115 - held for the process's life
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.lock.close()
            raise OSError(f"another gateway keeps its state in {path}: give this one its own --state") from None
        # WAL with synchronous=NORMAL: a commit survives the process dying at once; only losing power
        # can take the last commits, which are a second of counts at most.
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def load(self) -> Loaded:
        """What the file holds, once what is past keeping is deleted (as the gateway's memory forgets it)."""
        wall = time.time()
        oldest = datetime.fromtimestamp(wall - DAYS_KEPT * 86400, UTC)
        self.prune(oldest.strftime("%Y-%m-%d"), int(wall // 60) - MINUTES_KEPT)
        out = Loaded()
        for key, model, engine, day, *n in self.db.execute("SELECT * FROM usage"):
            out.rows[(key, model, engine, day)] = Row(*n)
        out.month = {(m, k): t for m, k, t in self.db.execute("SELECT month, key, tokens FROM month")}
        out.minutes = {(m, k): t for m, k, t in self.db.execute("SELECT minute, key, tokens FROM minutes")}
        out.windows = list(self.db.execute("SELECT key, kind, second, count FROM windows WHERE second > ?",
                                           (int(wall) - 60,)))  # fmt: skip
        return out

    def save_windows(self, counts: list[tuple[str, str, int, int]]) -> None:
        """The per-minute windows as they are at a stop, for the next start (a crash loses them: a
        minute of limits at most)."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM windows")
            self.db.executemany("INSERT INTO windows VALUES (?, ?, ?, ?)", counts)

    async def admit(self, who: Identity, month: str, details: bool, unwritten: int = 0) -> Counts:
        raise NotImplementedError("an embedded store is not shared: the gateway decides in memory")

    async def write(self, batch: Batch) -> None:
        try:
            await asyncio.to_thread(self._write, batch)
        except sqlite3.Error as err:
            raise StoreError(f"sqlite: {err}") from None

    def _write(self, b: Batch) -> None:
        metrics.STATE_ROUND_TRIPS.inc()
        with self.db:  # one transaction: the batch is in the file whole or not at all
            self.db.execute("BEGIN")
            # Once per id: a write cancelled at shutdown still runs in its thread, and is sent again.
            if self.db.execute("INSERT OR IGNORE INTO batches VALUES (?, ?)", (b.id, time.time())).rowcount == 0:
                return
            self.db.executemany(
                "INSERT INTO usage VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET"
                " requests = requests + excluded.requests, prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
                " completion_tokens = completion_tokens + excluded.completion_tokens,"
                " errors = errors + excluded.errors",
                [(*k, r.requests, r.prompt_tokens, r.completion_tokens, r.errors) for k, r in b.rows.items()],
            )
            add = " ON CONFLICT DO UPDATE SET tokens = tokens + excluded.tokens"
            self.db.executemany("INSERT INTO month VALUES (?, ?, ?)" + add, [(*k, n) for k, n in b.month.items()])
            self.db.executemany("INSERT INTO minutes VALUES (?, ?, ?)" + add, [(*k, n) for k, n in b.minutes.items()])

    def prune(self, oldest_day: str, oldest_minute: int) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM usage WHERE day < ?", (oldest_day,))
            self.db.execute("DELETE FROM month WHERE month < ?", (oldest_day[:7],))
            self.db.execute("DELETE FROM minutes WHERE minute < ?", (oldest_minute,))
            self.db.execute("DELETE FROM batches WHERE written < ?", (oldest_minute * 60.0,))

    async def read(self, days: list[str], minutes: list[int], month: str) -> Loaded:
        raise NotImplementedError("an embedded store is read from the gateway's memory")

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self.db.close()
        self.lock.close()

"""Who is calling: client and admin keys, reloaded when their files change, and the limits per key."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roundhouse_gateway import metrics
from roundhouse_gateway.http.wire import ClientError, Scope, header, iso_time
from roundhouse_gateway.keys.keys import Identity, KeyFileError, KeyRing, parse_keys, read_key_file
from roundhouse_gateway.state.keeper import Keeper

log = logging.getLogger("roundhouse.gateway.keys")
RELOAD_INTERVAL = 0.5  # seconds between looks at the key files: a change is in force within a second
NO_KEY = Identity(name="")  # authentication off: one anonymous caller, never limited


@dataclass
class KeySource:
    """A key file and what was last loaded from it. A file that changes into something unusable keeps
    the last good keys in force, and says why in the log and in /admin/keys."""

    path: Path | None
    ring: KeyRing = field(default_factory=KeyRing)
    seen: tuple[int, int, int] | None = None  # (inode, size, mtime_ns) of what was loaded
    loaded_at: float | None = None
    error: str | None = None

    def load(self) -> None:
        """Read the file now; KeyFileError if it cannot be used."""
        if self.path is None:
            return
        self.seen = _stat(self.path)
        self.ring = read_key_file(self.path)
        self.loaded_at, self.error = time.time(), None

    def reload_if_changed(self) -> bool:
        if self.path is None or _stat(self.path) == self.seen:
            return False
        try:
            self.load()
        except KeyFileError as err:
            self.error = str(err)
            log.error("key file not reloaded", extra={"path": str(self.path), "error": self.error})
            return False
        log.info("key file reloaded", extra={"path": str(self.path), "keys": len(self.ring.by_digest)})
        return True


def _stat(path: Path) -> tuple[int, int, int] | None:
    # A mounted Secret changes by swapping a symlink: stat() follows it to the new file.
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class Auth:
    """Client keys (with identities and limits) and admin keys."""

    def __init__(self, clients: KeySource | None = None, admins: KeySource | None = None,
                 state: Keeper | None = None) -> None:  # fmt: skip
        self.clients = clients or KeySource(None)
        self.admins = admins or KeySource(None)
        self.state = state or Keeper()  # no store: this replica's memory only
        self.limiter = self.state.limiter
        self.usage = self.state.usage
        metrics.KEY_USAGE.usage = self.usage  # one gateway a process: its usage is what /metrics shows

    @classmethod
    def from_keys(cls, api_keys: list[str], admin_keys: list[str]) -> Auth:
        """Keys given in code (tests, embedding): the old one-key-per-line form."""
        return cls(KeySource(None, parse_keys("\n".join(api_keys))), KeySource(None, parse_keys("\n".join(admin_keys))))

    @property
    def enabled(self) -> bool:
        return self.clients.ring.enabled

    def client(self, scope: Scope) -> Identity:
        """The caller of an API request; 401 in OpenAI's words without a known key."""
        if not self.clients.ring.enabled:
            return NO_KEY
        found = self.clients.ring.lookup(_bearer(scope))
        if found is None:
            raise ClientError(401, "Invalid or missing API key: send Authorization: Bearer <key>.", "invalid_api_key")
        return found

    def admin(self, scope: Scope) -> None:
        if not self.admins.ring.enabled:
            raise ClientError(403, "the admin API is disabled: start the gateway with admin keys", "admin_disabled")
        if self.admins.ring.lookup(_bearer(scope)) is None:
            raise ClientError(401, "Invalid or missing admin key: send Authorization: Bearer <key>.", "invalid_api_key")

    async def watch(self) -> None:
        """Reload the key files when they change, and write the counts to the state store, until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.state.run())
            tasks.create_task(self._reload())

    async def _reload(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_INTERVAL)
            self.clients.reload_if_changed()
            self.admins.reload_if_changed()

    def describe(self, month_used: dict[str, int] | None = None) -> dict[str, Any]:
        """What /admin/keys shows: names and limits (never keys), where they came from, and where the
        counts are kept (`month_used`: this month's tokens per key from the store; none: this replica's)."""
        used = month_used or {}
        ring = self.clients.ring
        keys = sorted({i.name: i for i in ring.by_digest.values()}.values(), key=lambda i: i.name)
        return {
            "enabled": ring.enabled, "source": str(self.clients.path) if self.clients.path else None,
            "loadedAt": iso_time(self.clients.loaded_at) if self.clients.loaded_at else None,
            "reloadError": self.clients.error,
            # "store": every replica's counts; "replica": this one's (no shared store, or it is away).
            **self.state.scope(),
            "keys": [{"name": i.name, "models": list(i.models), "engines": list(i.engines),
                      "requestsPerMinute": i.requests_per_minute, "tokensPerMinute": i.tokens_per_minute,
                      "monthlyTokenBudget": i.monthly_token_budget,
                      "monthTokensUsed": used.get(i.name, self.limiter.month_used(i.name, time.time()))} for i in keys],
        }  # fmt: skip


def _bearer(scope: Scope) -> str:
    auth = header(scope, b"authorization") or ""
    return auth[7:] if auth[:7].lower() == "bearer " else ""

"""The state store a URL names (`--state`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from roundhouse_gateway.state.keeper import Keeper
from roundhouse_gateway.state.store import Store


class StateError(ValueError):
    """The --state URL cannot be used; the message says what is wanted."""


def open_state(url: str, on_failure: Literal["open", "closed"] = "open", timeout: float = 0.25) -> Keeper:
    """The keeper over the store `url` names: sqlite:///PATH, redis://..., rediss://... or memory:."""
    store: Store | None
    if url in ("memory", "memory:"):
        store = None
    elif url.startswith("sqlite://"):
        path = url[len("sqlite://") :]
        if not path.startswith("/"):
            raise StateError(f"--state {url!r}: sqlite wants an absolute path, sqlite:///var/lib/roundhouse/state.db")
        from roundhouse_gateway.state.sqlite_store import SqliteStore

        try:
            store = SqliteStore(Path(path))
        except Exception as err:  # sqlite3.Error or OSError: either way the file cannot be used
            raise StateError(f"--state {url!r}: {err}") from None
    elif url.startswith(("redis://", "rediss://", "unix://")):
        # Imported here: a gateway without a shared store never loads the client.
        from roundhouse_gateway.state.redis_store import RedisStore

        store = RedisStore(url, timeout)
    else:
        raise StateError(f"--state {url!r}: want sqlite:///PATH, redis://HOST:PORT/DB, rediss://... or memory:")
    if timeout <= 0:
        raise StateError(f"--state-timeout must be more than 0 seconds, got {timeout}")
    return Keeper(store, on_failure, timeout)

"""List+watch of the engines' Deployments and Pods, straight into the store, without kopf.

These two kinds are most of the operator's events (about nine in twelve at 1,000 engines), and
the operator only records them. kopf gives each event its whole treatment (a worker task per
object, a diff base deep-copied from the body, handler causes and invocation): py-spy put kopf
at half of the operator's CPU. Here a thread per kind reads the watch stream, decodes it, and
hands each received batch of events to the event loop at once.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

log = logging.getLogger("roundhouse.operator.watch")
Event = tuple[str, dict[str, Any]]  # (ADDED | MODIFIED | DELETED, object with its kind)
# A failed watch is a refused connection or an error answer, cheap to retry; a short cap means the
# store is current again within seconds of an API server's return.
BACKOFF_BASE, BACKOFF_MAX = 0.5, 5.0
RELIST_AFTER = 3  # failures in a row from one resourceVersion before listing afresh


class WatchSource(Protocol):
    def list_with_version(self, path: str, namespace: str | None, selector: str | None
                          ) -> tuple[list[dict[str, Any]], str]: ...  # fmt: skip

    def watch_objects(self, path: str, namespace: str | None, selector: str | None, resource_version: str
                      ) -> Iterator[list[dict[str, Any]]]: ...  # fmt: skip


class Gone(Exception):
    """The API server no longer has the resourceVersion we watch from (HTTP 410): list again."""


def namespace_allowed(namespace: str, patterns: list[str]) -> bool:
    """kopf's namespace patterns: a namespace is served if any pattern matches it (none: every one)."""
    return not patterns or any(_matches(namespace, p) for p in patterns)


def _matches(namespace: str, pattern: str) -> bool:
    """One kopf pattern: comma-separated globs, `!glob` excludes; a leading exclusion implies `*`; the
    first inclusive glob decides the initial match, later ones re-include only what it matched."""
    globs = [g.strip() for g in pattern.split(",") if g.strip()]
    if not globs:
        return False
    initial = matched = globs[0].startswith("!")
    decided = initial  # an implied catch-all is the first inclusive glob
    for glob in globs:
        if glob.startswith("!"):
            if fnmatch.fnmatchcase(namespace, glob[1:]):
                matched = False
        elif not decided:
            decided, initial = True, fnmatch.fnmatchcase(namespace, glob)
            matched = initial
        elif initial and fnmatch.fnmatchcase(namespace, glob):
            matched = True
    return matched


class Watcher:
    """One kind in one scope (a namespace, or None for all): list, then watch from the list's
    resourceVersion; list again when that version is gone. `deliver` runs in the watcher's thread."""

    def __init__(self, source: WatchSource, kind: str, path: str, scope: str | None, selector: str | None,
                 deliver: Callable[[str, str | None, list[Event] | None, list[dict[str, Any]] | None], None]
                 ) -> None:  # fmt: skip
        self.source, self.kind, self.path, self.scope, self.selector = source, kind, path, scope, selector
        self.deliver = deliver
        self.version: str | None = None

    def relist(self) -> None:
        """List everything and hand it over whole (the receiver drops what is no longer there)."""
        items, self.version = self.source.list_with_version(self.path, self.scope, self.selector)
        self.deliver(self.kind, self.scope, None, [{**i, "kind": self.kind} for i in items])

    def watch_once(self) -> None:
        """One watch request, until the server ends it; raises Gone when a relist is needed."""
        assert self.version is not None
        for batch in self.source.watch_objects(self.path, self.scope, self.selector, self.version):
            events: list[Event] = []
            for raw in batch:
                kind, obj = raw.get("type"), raw.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone(obj.get("message", "resourceVersion too old"))
                    raise RuntimeError(f"watch error: {obj.get('message', obj)}")
                self.version = obj.get("metadata", {}).get("resourceVersion", self.version)
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    events.append((kind, {**obj, "kind": self.kind}))
            if events:
                self.deliver(self.kind, self.scope, events, None)

    def run(self, stop: threading.Event) -> None:
        """Watch until `stop` is set, backing off on errors; the caller has done the first relist."""
        failures = 0
        while not stop.is_set():
            try:
                if self.version is None:
                    self.relist()
                self.watch_once()
                failures = 0
            except Gone as err:
                log.info("watch expired, listing again", extra={"kind": self.kind, "reason": str(err)})
                self.version = None
            except Exception as err:  # the API server restarting, a network blip: retry, never die
                failures += 1
                delay = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (failures - 1))
                log.warning("watch failed", extra={"kind": self.kind, "error": str(err), "retryIn": delay})
                if failures >= RELIST_AFTER:
                    # An API server back from an outage may keep refusing the old version with an
                    # error other than 410 ("too large resource version", a storage error): start over.
                    self.version = None
                stop.wait(delay)

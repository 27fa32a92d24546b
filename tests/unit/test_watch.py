"""The operator's own list+watch (watch.py) with the API server faked at its boundary, and the
store's relist."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from roundhouse_operator.store import Store
from roundhouse_operator.watch import Event, Watcher, namespace_allowed


def obj(name: str, rv: str, engine: str = "e1", ns: str = "ns") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "uid": f"u-{name}", "resourceVersion": rv,
                         "labels": {"roundhouse.dev/engine": engine}}}  # fmt: skip


class FakeSource:
    """Scripted answers: each watch call plays the next script (a list of batches, or an exception)."""

    def __init__(self, listings: list[list[dict[str, Any]]], watches: list[Any], stop: threading.Event) -> None:
        self.listings, self.watches, self.stop = listings, watches, stop
        self.watched_from: list[str] = []

    def list_with_version(self, path: str, namespace: str | None, selector: str | None
                          ) -> tuple[list[dict[str, Any]], str]:  # fmt: skip
        items = self.listings.pop(0)
        return items, max((i["metadata"]["resourceVersion"] for i in items), default="1")

    def watch_objects(self, path: str, namespace: str | None, selector: str | None, resource_version: str
                      ) -> Iterator[list[dict[str, Any]]]:  # fmt: skip
        self.watched_from.append(resource_version)
        if not self.watches:
            self.stop.set()
            return
        script = self.watches.pop(0)
        if isinstance(script, Exception):
            raise script
        yield from script


def run(listings: list[list[dict[str, Any]]], watches: list[Any]) -> tuple[list[Any], FakeSource]:
    stop = threading.Event()
    source = FakeSource(listings, watches, stop)
    got: list[Any] = []

    def deliver(kind: str, scope: str | None, events: list[Event] | None, items: list[dict[str, Any]] | None) -> None:
        got.append(("events", [(t, o["metadata"]["name"], o["kind"]) for t, o in events]) if events is not None
                   else ("list", [i["metadata"]["name"] for i in items or []]))  # fmt: skip

    w = Watcher(source, "Pod", "api/v1/pods", "ns", "roundhouse.dev/engine", deliver)
    w.relist()
    w.run(stop)
    return got, source


def test_events_are_delivered_in_batches_from_the_listed_version_and_bookmarks_move_it() -> None:
    got, source = run(
        [[obj("a", "5")]],
        [[[{"type": "ADDED", "object": obj("b", "6")}, {"type": "MODIFIED", "object": obj("a", "7")}],
          [{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}],
          [{"type": "DELETED", "object": obj("b", "10")}]]],
    )  # fmt: skip
    assert got == [("list", ["a"]), ("events", [("ADDED", "b", "Pod"), ("MODIFIED", "a", "Pod")]),
                   ("events", [("DELETED", "b", "Pod")])]  # fmt: skip
    assert source.watched_from == ["5", "10"]  # the second watch resumes after the last event


def test_a_gone_version_means_a_new_listing_then_watching_from_it() -> None:
    got, source = run(
        [[obj("a", "5")], [obj("a", "20"), obj("c", "21")]],
        [[[{"type": "ERROR", "object": {"code": 410, "message": "too old resource version: 5 (15)"}}]]],
    )
    assert got == [("list", ["a"]), ("list", ["a", "c"])]
    assert source.watched_from == ["5", "21"]


def test_a_failing_watch_is_retried_from_where_it_was(monkeypatch: Any) -> None:
    monkeypatch.setattr("roundhouse_operator.watch.BACKOFF_BASE", 0.01)
    got, source = run(
        [[obj("a", "5")]], [ConnectionResetError("reset"), [[{"type": "ADDED", "object": obj("b", "6")}]]]
    )
    assert got == [("list", ["a"]), ("events", [("ADDED", "b", "Pod")])]
    assert source.watched_from == ["5", "5", "6"]


def test_an_error_event_is_retried_and_a_version_failing_again_and_again_is_listed_afresh(monkeypatch: Any) -> None:
    # kopf ended its watcher for good on such an event: the operator never saw a new engine again.
    monkeypatch.setattr("roundhouse_operator.watch.BACKOFF_BASE", 0.01)
    error = [[{"type": "ERROR", "object": {"code": 500, "message": "Too large resource version"}}]]
    got, source = run(
        [[obj("a", "5")], [obj("a", "5"), obj("c", "8")]],
        [error, error, error, [[{"type": "ADDED", "object": obj("d", "9")}]]],
    )
    assert got == [("list", ["a"]), ("list", ["a", "c"]), ("events", [("ADDED", "d", "Pod")])]
    assert source.watched_from == ["5", "5", "5", "8", "9"]


PATTERNS = [
    ["*, !roundhouse-system"],
    ["*, !roundhouse-system, !ha-*"],
    ["!ha-*"],
    ["team-*"],
    ["myapp-*, !*-pr-*, *pr-123"],
    ["!*-pr-*, *pr-123"],
    ["a", "b-*"],
    ["*", "!roundhouse-system"],
]
NAMES = [
    "anything",
    "team-a",
    "roundhouse-system",
    "ha-1234",
    "myapp-test",
    "myapp-pr-123",
    "myapp-pr-456",
    "otherapp-pr-123",
    "a",
    "b-1",
    "other",
]


@pytest.mark.parametrize("patterns", PATTERNS, ids=lambda p: "|".join(p))
def test_namespace_patterns_are_kopfs_own(patterns: list[str]) -> None:
    """The watches the operator runs itself serve exactly the namespaces kopf serves (its own matcher
    is the reference): each list item is a pattern, and a namespace is served if any one matches."""
    from kopf._cogs.structs.references import match_namespace

    for name in NAMES:
        assert namespace_allowed(name, patterns) == any(match_namespace(name, p) for p in patterns), (name, patterns)
    assert namespace_allowed("anything", [])
    assert not namespace_allowed("ha-1234", ["*, !roundhouse-system, !ha-*"])
    assert namespace_allowed("roundhouse-system", ["*", "!roundhouse-system"])  # "*" alone matches it


def test_a_relisting_drops_what_is_gone_and_names_every_engine_touched() -> None:
    s = Store()
    for o in (obj("a", "1", "e1"), obj("b", "1", "e2"), obj("x", "1", "e3", ns="other")):
        s.put("Pod", o)
    touched = s.replace("Pod", "ns", [obj("a", "2", "e1"), obj("c", "2", "e4")])
    assert touched == {("ns", "e1"), ("ns", "e2"), ("ns", "e4")}
    assert sorted(p["metadata"]["name"] for p in s.all("Pod", "ns")) == ["a", "c"]
    assert s.owned("Pod", "ns", "e2") == [] and len(s.all("Pod", "other")) == 1  # other scopes untouched

"""An in-memory copy of what the operator watches, fed by kopf's watch events."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from . import timeline
from .render import ENGINE_LABEL

Key = tuple[str, str]  # (namespace, name)


class Store:
    """Latest body of each watched object, by kind, namespace and name."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._objects: dict[str, dict[str, dict[str, dict[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
        # (kind, namespace, engine) -> names of objects labelled for that engine: owned() without a scan.
        self._by_engine: dict[tuple[str, str, str], set[str]] = defaultdict(set)
        # (namespace, engine) -> engines whose spec.routing.fallback names it: referencing() without a scan
        # (scanning every engine on every engine event was quadratic, a tenth of the CPU at 1,000 engines).
        self._fallback_of: dict[Key, set[str]] = defaultdict(set)
        # Pod uid -> when each milestone was first seen (timeline.py): where an activation's time went.
        self._pod_times: dict[str, dict[str, float]] = {}
        self.clock = clock

    def put(self, kind: str, body: dict[str, Any]) -> str:
        """Keep `body` unless the store already holds a newer version of the object.

        The operator writes its own changes through (from the API server's responses), and a
        watch event queued before such a write must not roll the store back.
        """
        body = slim(kind, body)
        meta = body["metadata"]
        current = self._objects[kind][meta["namespace"]].get(meta["name"])
        if kind == "Pod" and (uid := meta.get("uid")):
            self._pod_times[uid] = timeline.stamp(self._pod_times.get(uid, {}), body, self.clock())
        if current is None or not _older(meta, current["metadata"]):
            if current is not None:
                self._unindex(kind, current)
            self._objects[kind][meta["namespace"]][meta["name"]] = body
            if engine := (meta.get("labels") or {}).get(ENGINE_LABEL):
                self._by_engine[(kind, meta["namespace"], engine)].add(meta["name"])
            for target in _fallbacks(kind, body):
                self._fallback_of[(meta["namespace"], target)].add(meta["name"])
        return str(meta["namespace"])

    def holds(self, kind: str, body: dict[str, Any]) -> bool:
        """Whether the store already has this version of the object or a newer one: the watch
        echoing the operator's own write (stored from the API server's answer), or a stale event."""
        meta = body["metadata"]
        current = self._objects[kind][meta["namespace"]].get(meta["name"])
        if current is None:
            return False
        have = current["metadata"]
        return have.get("uid") == meta.get("uid") and (
            have.get("resourceVersion") == meta.get("resourceVersion") or _older(meta, have)
        )

    def replace(self, kind: str, namespace: str | None, bodies: list[dict[str, Any]]) -> set[tuple[str, str | None]]:
        """A fresh listing of `kind` in `namespace` (None: all): drop what it no longer has, keep the
        rest. Returns the (namespace, engine) of every object listed or dropped."""
        listed = {(b["metadata"]["namespace"], b["metadata"]["name"]) for b in bodies}
        touched: set[tuple[str, str | None]] = set()
        for ns, objs in self._objects[kind].items():
            if namespace is None or ns == namespace:
                for name in [n for n in objs if (ns, n) not in listed]:
                    touched.add((ns, (objs[name]["metadata"].get("labels") or {}).get(ENGINE_LABEL)))
                    self.remove(kind, objs[name])
        for body in bodies:
            touched.add((self.put(kind, body), (body["metadata"].get("labels") or {}).get(ENGINE_LABEL)))
        return touched

    def remove(self, kind: str, body: dict[str, Any]) -> str:
        meta = body["metadata"]
        current = self._objects[kind][meta["namespace"]].pop(meta["name"], None)
        if current is not None:
            self._unindex(kind, current)
            self._pod_times.pop(current["metadata"].get("uid", ""), None)
        return str(meta["namespace"])

    def pod_times(self, namespace: str, engine: str) -> dict[str, float]:
        """When the engine's newest pod was first seen at each milestone (empty without a pod)."""
        pod = timeline.newest(self.owned("Pod", namespace, engine))
        return dict(self._pod_times.get(pod["metadata"].get("uid", ""), {})) if pod else {}

    def referencing(self, namespace: str, name: str) -> list[str]:
        """Engines of `namespace` whose spec.routing.fallback names `name`."""
        return sorted(self._fallback_of.get((namespace, name), ()))

    def _unindex(self, kind: str, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        if engine := (meta.get("labels") or {}).get(ENGINE_LABEL):
            self._by_engine[(kind, meta["namespace"], engine)].discard(meta["name"])
        for target in _fallbacks(kind, body):
            self._fallback_of[(meta["namespace"], target)].discard(meta["name"])

    def all(self, kind: str, namespace: str) -> list[dict[str, Any]]:
        return list(self._objects[kind][namespace].values())

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self._objects[kind][namespace].get(name)

    def owned(self, kind: str, namespace: str, engine: str) -> list[dict[str, Any]]:
        """Objects of `kind` labelled as belonging to `engine`."""
        objs = self._objects[kind][namespace]
        return [objs[n] for n in self._by_engine.get((kind, namespace, engine), ()) if n in objs]

    def holding_pods(self, namespace: str, engine: str) -> int:
        """How many of `engine`'s pods still hold their GPUs (holds_devices)."""
        objs = self._objects["Pod"][namespace]
        names = self._by_engine.get(("Pod", namespace, engine), ())
        return sum(1 for n in names if n in objs and holds_devices(objs[n]))

    def namespaces(self) -> set[str]:
        return {ns for by_ns in self._objects.values() for ns, objs in by_ns.items() if objs}


def _fallbacks(kind: str, body: dict[str, Any]) -> list[str]:
    """The engine names an InferenceEngine's spec.routing.fallback lists (none for other kinds)."""
    if kind != "InferenceEngine":
        return []
    fallback = (((body.get("spec") or {}).get("routing") or {}).get("fallback")) or []
    return [n for n in fallback if isinstance(n, str)]


def holds_devices(pod: dict[str, Any]) -> bool:
    """Whether a pod still holds what it requested (its GPUs): until it reaches a terminal phase. A
    deleted pod's kubelet stops every container, sets the phase Succeeded or Failed, and only then
    (about a second later on the real node) removes the object; the scheduler and the kubelet's
    device manager stop counting the pod at the terminal phase, so a swap need not wait for the rest."""
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def slim(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """Only what the controller reads: at 1,000 engines, pod specs and managedFields were most of
    the operator's memory. Engines and modes are kept whole (they are parsed as resources)."""
    meta = {k: v for k, v in body["metadata"].items() if k != "managedFields"}
    if kind == "Pod":
        return {"metadata": meta, "status": body.get("status") or {}}
    if kind == "Deployment":
        return {"metadata": meta, "spec": {"replicas": (body.get("spec") or {}).get("replicas")},
                "status": body.get("status") or {}}  # fmt: skip
    return {**body, "metadata": meta}


def _older(meta: dict[str, Any], than: dict[str, Any]) -> bool:
    """Whether `meta` describes an older version of the same object (same uid, lower resourceVersion)."""
    if meta.get("uid") != than.get("uid"):
        return False
    try:
        return int(meta.get("resourceVersion", 0)) < int(than.get("resourceVersion", 0))
    except ValueError:  # resourceVersion is opaque in general; etcd's happen to be integers
        return False

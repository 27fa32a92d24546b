"""Watch events into store updates and dirty engines, nothing else. watch.py's threads watch every
kind (engines, modes, and the engines' Deployments and Pods); kopf only runs the process (startup,
cleanup, signals, the liveness endpoint)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from roundhouse_api import GROUP, VERSION

from . import heap, metrics
from .controller import Controller
from .kube import Kube, load_config
from .leader import Elector
from .render import ENGINE_LABEL
from .store import Store
from .watch import Event, Watcher, namespace_allowed

log = logging.getLogger("roundhouse.operator")
STATE: dict[str, Any] = {}


def _controller() -> Controller:
    return STATE["controller"]  # type: ignore[no-any-return]


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Owner references do the garbage collection: no finalizers, and kopf keeps no state on our objects.
    settings.persistence.finalizer = "roundhouse.dev/kopf-finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="roundhouse.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="roundhouse.dev")
    settings.posting.enabled = False
    settings.networking.request_timeout = 60
    load_config()
    # API calls are blocking and run in threads; the default pool (cores + 4) starves a large reconcile.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=32, thread_name_prefix="kube"))
    controller = Controller(Store(), Kube())
    STATE["controller"] = controller
    namespaces = STATE.get("namespaces") or []
    await asyncio.to_thread(seed, controller, namespaces)
    heap.settle()  # what start-up and the seed built lives on: out of the collector's walks
    start_watchers(asyncio.get_running_loop())
    election = STATE.get("election")
    if election is None:
        for ns in controller.store.namespaces():  # the first pass: everything the seed listed
            controller.mark(ns)
        metrics.LEADER.set(1)
        STATE["task"] = asyncio.create_task(controller.run(), name="roundhouse-reconciler")
        return
    # Several replicas: all keep their stores warm, only the lease holder reconciles (writes).
    namespace, name, identity = election
    elector = Elector(namespace, name, identity)

    def lead() -> None:
        for ns in controller.store.namespaces():  # whatever happened while another replica led
            controller.mark(ns)
        STATE["task"] = asyncio.create_task(controller.run(), name="roundhouse-reconciler")

    def step_down() -> None:
        if (task := STATE.get("task")) is not None:
            task.cancel()
        controller.stop()
        # Exit rather than linger: the kubelet restarts the container as a fresh standby.
        os.kill(os.getpid(), signal.SIGTERM)

    STATE["elector"] = asyncio.create_task(elector.run(lead, step_down), name="leader-election")


# Not kopf's watching: a kopf watch stream that receives an ERROR event other than 410 (an API server
# coming back from an outage can send one) ends its watcher for good, and kopf never starts it again,
# so the operator went deaf to new engines after an outage in CI. kopf's relist also forgets what was
# deleted meanwhile. watch.py's watchers retry every failure, and a relist drops what is gone.
WATCHED = (
    ("EngineMode", f"apis/{GROUP}/{VERSION}/enginemodes", None),
    ("InferenceEngine", f"apis/{GROUP}/{VERSION}/inferenceengines", None),
    ("Deployment", "apis/apps/v1/deployments", ENGINE_LABEL),
    ("Pod", "api/v1/pods", ENGINE_LABEL),
)


def scopes(namespaces: list[str]) -> list[str | None]:
    """Namespaces to list and watch one by one, or [None] (all) when a pattern is among them."""
    plain = [ns for ns in namespaces if not any(ch in ns for ch in "*?![]")]
    return list(plain) if plain and len(plain) == len(namespaces) else [None]


def seed(controller: Controller, namespaces: list[str]) -> None:
    """List every watched kind before the first reconcile: an operator restarted mid-switch that
    reconciled an engine before it had seen its EngineMode, or the outgoing pods, would start the
    incoming family too early."""
    watchers = STATE["watchers"] = []
    for scope in scopes(namespaces):
        for kind, path, selector in WATCHED:
            watcher = Watcher(controller.kube, kind, path, scope, selector, _seeded)
            watcher.relist()
            watchers.append(watcher)


def _seeded(kind: str, scope: str | None, events: list[Event] | None, items: list[dict[str, Any]] | None) -> None:
    # Seeding runs in a worker thread before the reconciler starts: store only, nothing to wake.
    _store_listing(kind, scope, items or [])


def _store_listing(kind: str, scope: str | None, items: list[dict[str, Any]]) -> set[tuple[str, str | None]]:
    """A whole listing of `kind` in `scope` into the store; returns the (namespace, engine) pairs touched."""
    namespaces = STATE.get("namespaces") or []
    allowed = [i for i in items if namespace_allowed(i["metadata"]["namespace"], namespaces)]
    return _controller().store.replace(kind, scope, allowed)


def start_watchers(loop: asyncio.AbstractEventLoop) -> None:
    """Watch from the seed's resourceVersions, one thread per kind and scope; batches go to the loop
    (the seed's own listing went straight into the store, before the reconciler started)."""

    def deliver(kind: str, scope: str | None, events: list[Event] | None, items: list[dict[str, Any]] | None) -> None:
        loop.call_soon_threadsafe(receive, kind, scope, events, items)

    stop = STATE["stop"] = threading.Event()
    for watcher in STATE["watchers"]:
        watcher.deliver = deliver
        name = f"watch-{watcher.kind.lower()}-{watcher.scope or 'all'}"
        threading.Thread(target=watcher.run, args=(stop,), name=name, daemon=True).start()


def receive(kind: str, scope: str | None, events: list[Event] | None, items: list[dict[str, Any]] | None) -> None:
    """A batch from a watcher thread, on the loop: events, or a whole new listing after a relist."""
    if items is not None:
        relisted(kind, scope, items)
        return
    namespaces = STATE.get("namespaces") or []
    for type_, obj in events or []:
        if namespace_allowed(obj["metadata"].get("namespace", ""), namespaces):
            _on_event(kind, type_, obj)


def relisted(kind: str, scope: str | None, items: list[dict[str, Any]]) -> None:
    """A relist (after an expired or failed watch): what it no longer has is gone, as if deleted; an
    engine's own objects make that engine dirty, an engine or a mode its whole namespace."""
    controller = _controller()
    before = [b for ns in controller.store.namespaces() if scope in (None, ns) for b in controller.store.all(kind, ns)]
    touched = _store_listing(kind, scope, items)
    if kind == "InferenceEngine":
        for body in before:
            meta = body["metadata"]
            if controller.store.get(kind, meta["namespace"], meta["name"]) is None:
                controller.forget(meta["namespace"], meta["name"], meta.get("uid", ""))
    for namespace, engine in touched:
        controller.mark(namespace, engine if kind in ("Deployment", "Pod") else None)


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    for key in ("task", "elector"):
        if (task := STATE.get(key)) is not None:
            task.cancel()
    if (controller := STATE.get("controller")) is not None:
        controller.stop()
    if (stop := STATE.get("stop")) is not None:
        stop.set()


def _on_event(kind: str, type_: str, body: dict[str, Any]) -> None:
    """One watch event: into the store, and the engines it concerns marked dirty."""
    if "metadata" not in body:
        return
    controller = _controller()
    meta = body["metadata"]
    if type_ == "DELETED":
        namespace = controller.store.remove(kind, body)
        if kind == "InferenceEngine":
            controller.forget(namespace, meta["name"], meta.get("uid", ""))
    elif kind != "EngineMode" and controller.store.holds(kind, body):
        # Our own status patch or apply coming back through the watch: the pass that wrote it
        # already acted on it (at 1,000 engines, about a third of all events).
        return
    else:
        namespace = controller.store.put(kind, body)
    # An engine's own objects make only that engine dirty; a mode concerns every engine it governs.
    if kind == "InferenceEngine":
        controller.mark(namespace, meta["name"])
        if type_ in ("ADDED", "DELETED"):
            # Engines whose fallback names this one re-check their references now.
            for name in controller.referencing(namespace, meta["name"]):
                controller.mark(namespace, name)
    elif kind == "EngineMode":
        controller.mark(namespace)
    else:
        controller.mark(namespace, (meta.get("labels") or {}).get(ENGINE_LABEL))

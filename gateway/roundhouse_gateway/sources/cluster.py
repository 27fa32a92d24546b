"""Cluster mode: learn engines and the mode from the API server, endpoints from EndpointSlices.

Watches run in threads with the official client (list, then watch from the list's
resourceVersion; relist on 410 Gone or any break) and hand each change to the event loop,
which rebuilds the immutable Catalog the router reads.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from roundhouse_api import GROUP, VERSION, EngineMode, Family, InferenceEngine, Mode, governs
from roundhouse_api.demand import GatewayReport, forgotten, report_key
from roundhouse_api.families import FAMILIES
from roundhouse_gateway.engines.catalog import Catalog, Engine, engine_from_resource, mode_from_resource
from roundhouse_gateway.routing.demand import Demand
from roundhouse_gateway.sources import cluster_budget
from roundhouse_gateway.sources.budget import BudgetState, History

log = logging.getLogger("roundhouse.gateway.cluster")
SERVICE_LABEL = "kubernetes.io/service-name"
RELIST_BACKOFF = 0.25  # doubled after each failed relist, up to RELIST_BACKOFF_MAX
RELIST_BACKOFF_MAX = 2.0  # the API server's return is seen within this long (then one relist)
# A list sent while the API server is still starting can hang (custom resources: 5 s); one that has
# not answered in this long is sent again at once. Doubled after each timeout, so a namespace too
# large to list in that time is still listed.
LIST_TIMEOUT, LIST_TIMEOUT_MAX = 1.5, 60.0
EVENTS_FRESH = 2.0  # the admin page polls every 2 s: its events list is read at most this often


def slice_endpoints(slices: list[dict[str, Any]], starting: bool = False) -> list[str]:
    """Ready addresses of an engine's EndpointSlices as base URLs (one per replica); with `starting`,
    those of pods not ready yet and not terminating instead (early.py). Pure."""
    urls = []
    for s in slices:
        ports = s.get("ports") or []
        port = next((p.get("port") for p in ports if p.get("name") == "http"), None) or (
            ports[0].get("port") if ports else None
        )
        if port is None:
            continue
        for ep in s.get("endpoints") or []:
            conditions = ep.get("conditions") or {}
            not_ready = conditions.get("ready") is False
            if not_ready != starting or (starting and conditions.get("terminating") is True):
                continue
            for addr in ep.get("addresses") or []:
                host = f"[{addr}]" if ":" in addr else addr
                urls.append(f"http://{host}:{port}")
    return sorted(set(urls))


class ClusterSource:
    """Keeps the gateway's catalog equal to what the cluster says, for one namespace."""

    def __init__(self, namespace: str, on_change: Callable[[Catalog], None], kubeconfig: str | None = None,
                 endpoint_map: dict[str, str] | None = None) -> None:  # fmt: skip
        self.namespace = namespace
        self.on_change = on_change
        # Development and demos: send an engine's traffic to a URL of your choosing (like a port-forward).
        self.endpoint_map = endpoint_map or {}
        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        else:
            try:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
            except config.ConfigException:
                config.load_kube_config()  # type: ignore[no-untyped-call]
        self.api: Any = client.ApiClient()
        self.custom: Any = client.CustomObjectsApi(self.api)
        # The watches retry on their own (with backoff, and at once after a list timed out): a client
        # without urllib3's retries, whose three attempts would multiply every timeout.
        watching = client.Configuration.get_default_copy()
        watching.retries = 0
        watch_api = client.ApiClient(watching)
        self.watch_custom: Any = client.CustomObjectsApi(watch_api)
        self.discovery: Any = client.DiscoveryV1Api(watch_api)
        self.core: Any = client.CoreV1Api(self.api)
        self.objects: dict[str, dict[str, dict[str, Any]]] = {"engines": {}, "modes": {}, "slices": {}}
        self.listed: set[str] = set()
        self.secrets: dict[tuple[str, str], str | None] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        # Watches broken now, with when (epoch): the catalog is the last one seen, and /admin says so.
        self.broken: dict[str, float] = {}
        # Names this gateway's report: the pod's name in a cluster, else host and process.
        self.gateway_id = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
        self.stopping = threading.Event()
        self.history = History()
        self.events: tuple[float, list[dict[str, Any]]] = (0.0, [])

    # --- watching (threads) ---------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        ns, custom, discovery = self.namespace, self.watch_custom.list_namespaced_custom_object, self.discovery
        lists: dict[str, Callable[..., Any]] = {
            "engines": lambda **kw: custom(GROUP, VERSION, ns, "inferenceengines", **kw),
            "modes": lambda **kw: custom(GROUP, VERSION, ns, "enginemodes", **kw),
            "slices": lambda **kw: discovery.list_namespaced_endpoint_slice(ns, label_selector=SERVICE_LABEL, **kw),
        }
        for kind, fn in lists.items():
            threading.Thread(target=self._watch, args=(kind, fn), daemon=True, name=f"watch-{kind}").start()

    def stop(self) -> None:
        self.stopping.set()

    def stale_since(self) -> float | None:
        """When the oldest broken watch broke (epoch), or None: the view is current."""
        return min(self.broken.values(), default=None)

    def _watch(self, kind: str, list_fn: Callable[..., Any]) -> None:
        backoff, list_timeout = RELIST_BACKOFF, LIST_TIMEOUT
        while not self.stopping.is_set():
            try:
                try:
                    listing = list_fn(_request_timeout=list_timeout)
                except (urllib3.exceptions.ReadTimeoutError, urllib3.exceptions.MaxRetryError) as err:
                    if not _timed_out(err):
                        raise
                    self.broken.setdefault(kind, time.time())
                    log.warning("list timed out", extra={"kind": kind, "timeout": list_timeout})
                    list_timeout = min(LIST_TIMEOUT_MAX, list_timeout * 2)
                    continue  # the timeout was the wait: send it again at once
                list_timeout = LIST_TIMEOUT
                listing = listing if isinstance(listing, dict) else self.api.sanitize_for_serialization(listing)
                items = {i["metadata"]["name"]: i for i in listing.get("items", [])}
                self._hand_over(kind, "LIST", items)
                if self.broken.pop(kind, None) is not None:
                    log.info("watch resynced", extra={"kind": kind})
                backoff = RELIST_BACKOFF
                rv = listing["metadata"]["resourceVersion"]
                w: Any = watch.Watch()  # type: ignore[no-untyped-call]
                for ev in w.stream(list_fn, resource_version=rv, timeout_seconds=300, allow_watch_bookmarks=True):
                    if self.stopping.is_set():
                        w.stop()
                        return
                    if ev["type"] == "BOOKMARK":
                        continue
                    obj = (
                        ev["object"]
                        if isinstance(ev["object"], dict)
                        else self.api.sanitize_for_serialization(ev["object"])
                    )
                    self._hand_over(kind, ev["type"], obj)
            except ApiException as err:
                if err.status != 410:  # 410 Gone: the watch's resourceVersion expired; relist at once
                    self.broken.setdefault(kind, time.time())
                log.warning("watch restarts", extra={"kind": kind, "status": err.status, "reason": str(err.reason)})
                time.sleep(backoff)
                backoff = min(RELIST_BACKOFF_MAX, backoff * 2)
            except Exception as err:  # connection drops and the like: keep the last view, relist
                self.broken.setdefault(kind, time.time())
                log.warning("watch restarts", extra={"kind": kind, "error": repr(err)})
                time.sleep(backoff)
                backoff = min(RELIST_BACKOFF_MAX, backoff * 2)

    def _hand_over(self, kind: str, type_: str, obj: Any) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.apply, kind, type_, obj)

    # --- applying changes (event loop) ---------------------------------------------------------------
    def apply(self, kind: str, type_: str, obj: Any) -> None:
        store = self.objects[kind]
        if type_ == "LIST":
            store.clear()
            store.update(obj)
            self.listed.add(kind)
        elif type_ == "DELETED":
            store.pop(obj["metadata"]["name"], None)
        else:
            store[obj["metadata"]["name"]] = obj
        if self.listed == set(self.objects):
            self.on_change(self.catalog())
            if kind == "modes":  # the operator writes who holds the GPUs on the EngineMode's status
                self.history.record(time.time(), cluster_budget.held(self.governing(), self.objects["engines"]))

    def governing(self) -> dict[str, Any] | None:
        """The EngineMode that governs the namespace ("default" first), as watched."""
        names = sorted(self.objects["modes"], key=lambda n: (n != "default", n))
        return self.objects["modes"][names[0]] if names else None

    def catalog(self) -> Catalog:
        modes = []
        for raw in sorted(self.objects["modes"].values(), key=lambda m: (m["metadata"]["name"] != "default",
                                                                         m["metadata"]["name"])):  # fmt: skip
            try:
                modes.append(EngineMode.model_validate(raw))
            except ValidationError:
                continue
        slices_by_service: dict[str, list[dict[str, Any]]] = {}
        for s in self.objects["slices"].values():
            svc = (s["metadata"].get("labels") or {}).get(SERVICE_LABEL)
            if svc:
                slices_by_service.setdefault(svc, []).append(s)
        mode = modes[0] if modes else None
        engines: list[Engine] = []
        for raw in self.objects["engines"].values():
            try:
                ie = InferenceEngine.model_validate(raw)
            except ValidationError:
                continue  # the operator reports it as ConfigValid=False
            endpoints, starting = None, None
            if ie.metadata.name in self.endpoint_map:
                endpoints = [self.endpoint_map[ie.metadata.name]]
            elif ie.spec.engine != Family.EXTERNAL and not ie.spec.endpoints:
                endpoints = slice_endpoints(slices_by_service.get(ie.metadata.name, []))
                starting = slice_endpoints(slices_by_service.get(ie.metadata.name, []), starting=True)
            governed = governs(mode, ie.metadata.labels)
            engines.append(engine_from_resource(ie, endpoints, self.api_key(ie), governed, starting))
        return Catalog(tuple(engines), mode_from_resource(mode))

    def api_key(self, ie: InferenceEngine) -> str | None:
        """The engine's API key (an external API's, an SGLang engine's) from its Secret (one get per Secret, cached)."""
        ref = FAMILIES[ie.spec.engine].api_key_ref(ie.spec)
        if ref is None:
            return None
        key = (ref.name, ref.key)
        if key not in self.secrets:
            try:
                data = (self.core.read_namespaced_secret(ref.name, self.namespace).data or {}).get(ref.key)
                self.secrets[key] = base64.b64decode(data).decode() if data else None
            except ApiException as err:
                log.warning("cannot read API key secret", extra={"secret": ref.name, "status": err.status})
                self.secrets[key] = None
        return self.secrets[key]

    # --- mode onDemand: this gateway's report on the EngineMode -------------------------------------
    async def write_report(self, report: GatewayReport) -> None:
        """Merge-patch this gateway's own annotation on the governing EngineMode; reports older than an
        hour (their gateways are gone) are removed in the same patch, no other key is touched."""
        names = sorted(self.objects["modes"], key=lambda n: (n != "default", n))
        if not names:
            return
        mine = report_key(self.gateway_id)
        annotations = (self.objects["modes"][names[0]].get("metadata") or {}).get("annotations") or {}
        # Gone gateways' reports go in the same write (merge patch: null removes a key).
        gone: dict[str, str | None] = {k: None for k in forgotten(annotations, report.at, mine)}
        body = {"metadata": {"annotations": {**gone, mine: report.wire()}}}
        await asyncio.to_thread(
            self.custom.patch_namespaced_custom_object, GROUP, VERSION, self.namespace, "enginemodes", names[0], body,
            _content_type="application/merge-patch+json",
        )  # fmt: skip

    # --- admin: the Budget view ---------------------------------------------------------------------
    async def budget_state(self, now: float, own: Demand) -> tuple[BudgetState | None, History]:
        """Who holds the GPUs (the EngineMode's status and every gateway's requests) and the last swaps
        (the EngineMode's events, listed at most every EVENTS_FRESH seconds)."""
        mode = self.governing()
        if mode is None:
            return None, self.history
        if now - self.events[0] >= EVENTS_FRESH:
            selector = f"involvedObject.kind=EngineMode,involvedObject.name={mode['metadata']['name']}"
            try:
                listing = await asyncio.to_thread(self.core.list_namespaced_event, self.namespace,
                                                  field_selector=selector, _request_timeout=5)  # fmt: skip
                self.events = (now, self.api.sanitize_for_serialization(listing).get("items") or [])
            except Exception as err:  # the view still shows who holds the GPUs
                log.warning("cannot list the EngineMode's events", extra={"error": repr(err)})
        state = cluster_budget.state(mode, self.objects["engines"], own, report_key(self.gateway_id), self.events[1],
                                     now)  # fmt: skip
        return state, self.history

    # --- admin: switch the mode -------------------------------------------------------------------
    async def set_mode(self, mode: Mode) -> dict[str, Any]:
        """Patch the governing EngineMode's spec.mode; the operator carries the switch out."""
        names = sorted(self.objects["modes"], key=lambda n: (n != "default", n))
        if not names:
            raise LookupError(f"no EngineMode in namespace {self.namespace}: create one first")
        name = names[0]
        raw = self.objects["modes"][name]
        previous = raw["spec"].get("mode")
        body = switch_patch(raw, mode)
        await asyncio.to_thread(
            self.custom.patch_namespaced_custom_object, GROUP, VERSION, self.namespace, "enginemodes", name,
            body, _content_type="application/merge-patch+json",
        )  # fmt: skip
        return {"mode": mode.value, "previous": previous, "engineMode": f"{self.namespace}/{name}"}


# spec.onDemand applies only to mode onDemand (the CRD refuses it otherwise): a switch out of it keeps
# the settings here, and a switch back restores them.
KEPT_ON_DEMAND = "roundhouse.dev/on-demand-settings"


def switch_patch(raw: dict[str, Any], mode: Mode) -> dict[str, Any]:
    """The merge patch that switches an EngineMode to `mode`, keeping its onDemand settings across. Pure."""
    spec = raw.get("spec") or {}
    annotations = (raw.get("metadata") or {}).get("annotations") or {}
    if mode == Mode.ON_DEMAND:
        body: dict[str, Any] = {"spec": {"mode": mode.value}}
        if not spec.get("onDemand") and KEPT_ON_DEMAND in annotations:
            with contextlib.suppress(ValueError):  # unreadable: the defaults
                body["spec"]["onDemand"] = json.loads(annotations[KEPT_ON_DEMAND])
        return body
    if spec.get("onDemand"):
        return {"metadata": {"annotations": {KEPT_ON_DEMAND: json.dumps(spec["onDemand"], sort_keys=True)}},
                "spec": {"mode": mode.value, "onDemand": None}}  # fmt: skip
    return {"spec": {"mode": mode.value}}


def _timed_out(err: Exception) -> bool:
    """A read timeout, bare or as the reason urllib3 gave up."""
    reason = err.reason if isinstance(err, urllib3.exceptions.MaxRetryError) else err
    return isinstance(reason, urllib3.exceptions.ReadTimeoutError)

"""The operator's own API calls: server-side apply, status patches, events, nodes, and the list+watch
of its engines' Deployments and Pods (watch.py). kopf watches the engines and modes itself."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from roundhouse_api import GROUP, VERSION

from . import metrics
from .render import FIELD_MANAGER

log = logging.getLogger("roundhouse.operator.kube")
APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
PLURALS = {"InferenceEngine": "inferenceengines", "EngineMode": "enginemodes"}
NODE_CACHE_SECONDS = 30.0
APPLY_PATHS = {
    "Deployment": "/apis/apps/v1/namespaces/{namespace}/deployments/{name}",
    "Service": "/api/v1/namespaces/{namespace}/services/{name}",
    "PersistentVolumeClaim": "/api/v1/namespaces/{namespace}/persistentvolumeclaims/{name}",
}


def _collection(path: str, namespace: str | None) -> str:
    """The URL of a collection, e.g. "api/v1/pods" in one namespace or in all."""
    group, _, plural = path.rpartition("/")
    return f"/{group}/namespaces/{namespace}/{plural}" if namespace else f"/{path}"


def load_config() -> None:
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]


class Kube:
    """Blocking calls; the controller runs them in worker threads."""

    def __init__(self) -> None:
        # The client's partial type hints add nothing at this edge: treat its APIs as untyped.
        cfg = client.Configuration.get_default_copy()
        cfg.connection_pool_maxsize = 32  # as many connections as worker threads
        self.api: Any = client.ApiClient(cfg)
        self.core: Any = client.CoreV1Api(self.api)
        self.apps: Any = client.AppsV1Api(self.api)
        self.custom: Any = client.CustomObjectsApi(self.api)
        self._nodes: tuple[float, list[dict[str, Any]]] = (0.0, [])

    def list_objects(self, path: str, namespace: str | None, selector: str | None = None) -> list[dict[str, Any]]:
        """Objects at `path`, e.g. "api/v1/pods", in one namespace or all, optionally by label selector."""
        listing = self._list(path, namespace, selector)
        kind = listing.get("kind", "").removesuffix("List")
        return [{**item, "kind": kind} for item in listing.get("items", [])]

    def list_with_version(self, path: str, namespace: str | None, selector: str | None
                          ) -> tuple[list[dict[str, Any]], str]:  # fmt: skip
        """Like list_objects, with the list's resourceVersion to watch from."""
        listing = self._list(path, namespace, selector)
        return listing.get("items", []), str(listing.get("metadata", {}).get("resourceVersion", ""))

    def _list(self, path: str, namespace: str | None, selector: str | None) -> dict[str, Any]:
        metrics.API_REQUESTS.labels(verb="list").inc()
        return self._call("GET", _collection(path, namespace), None, "application/json",
                          [("labelSelector", selector)] if selector else [])  # fmt: skip

    def watch_objects(self, path: str, namespace: str | None, selector: str | None, resource_version: str,
                      timeout: int = 300) -> Iterator[list[dict[str, Any]]]:  # fmt: skip
        """One watch request: the events decoded, a list per chunk the server sent (bookmarks included)."""
        metrics.API_REQUESTS.labels(verb="watch").inc()
        query = [("watch", "true"), ("resourceVersion", resource_version), ("allowWatchBookmarks", "true"),
                 ("timeoutSeconds", str(timeout))] + ([("labelSelector", selector)] if selector else [])  # fmt: skip
        method, url, headers, _, _ = self.api.param_serialize(
            method="GET", resource_path=_collection(path, namespace), query_params=query,
            header_params={"Accept": "application/json"}, auth_settings=["BearerToken"],
        )  # fmt: skip
        resp = self.api.call_api(method, url, header_params=headers, _request_timeout=(10, timeout + 30))
        if resp.status != 200:
            resp.read()
            raise ApiException(http_resp=resp)
        pending = b""
        try:
            for chunk in resp.response.stream(64 * 1024, decode_content=False):
                *lines, pending = (pending + chunk).split(b"\n")
                if lines:
                    yield [orjson.loads(line) for line in lines if line.strip()]
        finally:
            # Left early, the connection still has bytes in flight; urllib3 drops a pooled
            # connection that is readable before reusing it (test_operator_watch checks).
            resp.response.release_conn()

    def _call(self, method: str, path: str, body: dict[str, Any] | None, content_type: str,
              query: list[tuple[str, str]] | None = None) -> dict[str, Any]:  # fmt: skip
        """One raw API request with the client's connection pool and credentials.

        The typed API methods validate every argument with pydantic and build model objects from
        every response; at a thousand engines that was most of the operator's CPU.
        """
        method, url, headers, _, _ = self.api.param_serialize(
            method=method, resource_path=path, query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"}, auth_settings=["BearerToken"],
        )  # fmt: skip
        # The client encodes JSON content types itself; apply-patch+yaml goes as text (JSON is valid YAML).
        payload = json.dumps(body) if body is not None and "yaml" in content_type else body
        resp = self.api.call_api(method, url, header_params=headers, body=payload)
        resp.read()
        if not 200 <= resp.status < 300:
            raise ApiException(http_resp=resp)
        return orjson.loads(resp.data)  # type: ignore[no-any-return]

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply with the field manager `roundhouse`; returns the object as stored."""
        kind, meta = obj["kind"], obj["metadata"]
        if kind not in APPLY_PATHS:
            raise ValueError(f"cannot apply kind {kind}")
        metrics.API_REQUESTS.labels(verb="apply").inc()
        path = APPLY_PATHS[kind].format(namespace=meta["namespace"], name=meta["name"])
        return self._call("PATCH", path, obj, APPLY, [("fieldManager", FIELD_MANAGER), ("force", "true")])

    def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch the status subresource (never the spec); returns the object as stored."""
        metrics.API_REQUESTS.labels(verb="patch_status").inc()
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURALS[kind]}/{name}/status"
        return self._call("PATCH", path, {"status": status}, MERGE)

    def annotate_pod(self, namespace: str, name: str, annotations: dict[str, str | None]) -> None:
        """Merge-patch a pod's annotations (None removes one): a scale-down marks the pods it stops."""
        metrics.API_REQUESTS.labels(verb="patch").inc()
        self._call("PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}", {"metadata": {"annotations": annotations}},
                   MERGE)  # fmt: skip

    def event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on the object, shown by `kubectl describe`."""
        meta = obj["metadata"]
        now = datetime.now(UTC)
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=meta["namespace"]),
            involved_object=client.V1ObjectReference(
                api_version=obj.get("apiVersion"), kind=obj.get("kind"), name=meta["name"],
                namespace=meta["namespace"], uid=meta.get("uid"),
            ),
            reason=reason, message=message[:1024], type=type_, first_timestamp=now, last_timestamp=now, count=1,
            source=client.V1EventSource(component="roundhouse-operator"),
        )  # fmt: skip
        metrics.API_REQUESTS.labels(verb="create_event").inc()
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except ApiException as err:  # an Event is best effort; never fail a reconcile for it
            log.warning("could not post event", extra={"object": meta["name"], "error": str(err.reason)})

    def secret_value(self, namespace: str, name: str, key: str) -> tuple[str | None, str | None]:
        """One key of one Secret (get only: the operator never lists Secrets): (value, None), or
        (None, what is wrong in words that name the Secret)."""
        metrics.API_REQUESTS.labels(verb="get_secret").inc()
        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except ApiException as err:
            log.warning("cannot read secret", extra={"secret": f"{namespace}/{name}", "error": str(err.reason)})
            if err.status == 404:
                return None, f"Secret {name} does not exist in namespace {namespace}"
            if err.status == 403:
                return None, (f"the operator may not read Secret {name} (list it in the chart's"
                              " gateway.externalApiKeySecrets)")  # fmt: skip
            return None, f"Secret {name} could not be read: {err.reason}"
        data = (secret.data or {}).get(key)
        if not data:
            return None, f"Secret {name} has no key {key!r}"
        return base64.b64decode(data).decode(), None

    def cached_nodes(self) -> list[dict[str, Any]] | None:
        """The nodes listed less than NODE_CACHE_SECONDS ago, or None: no thread needed to read them."""
        at, cached = self._nodes
        return cached if time.monotonic() - at < NODE_CACHE_SECONDS else None

    def nodes(self) -> list[dict[str, Any]]:
        """Nodes (labels and allocatable), cached briefly: only used for the ModelFits estimate."""
        if (cached := self.cached_nodes()) is not None:
            return cached
        cached = self._nodes[1]
        metrics.API_REQUESTS.labels(verb="list_nodes").inc()
        try:
            items = self.core.list_node().items
        except ApiException as err:
            log.warning("cannot list nodes", extra={"error": str(err.reason)})
            return cached
        nodes = [{"labels": n.metadata.labels or {}, "allocatable": n.status.allocatable or {}} for n in items]
        self._nodes = (time.monotonic(), nodes)
        return nodes

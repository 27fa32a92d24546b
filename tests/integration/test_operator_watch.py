"""The operator's own list+watch (Kube.list_with_version / watch_objects) against the real API server."""

from __future__ import annotations

import time
from typing import Any

from kubernetes import config

from roundhouse_operator.kube import Kube
from roundhouse_operator.render import ENGINE_LABEL
from tests.support.cluster import Cluster

PATH = "api/v1/configmaps"  # any labelled kind takes the same path through the code


def configmap(name: str, engine: str | None) -> dict[str, Any]:
    labels = {ENGINE_LABEL: engine} if engine else {}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}


def test_watch_sees_labelled_objects_and_leaving_it_early_spoils_no_connection(
    cluster: Cluster, namespace: str
) -> None:
    config.load_kube_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    kube = Kube()
    items, version = kube.list_with_version(PATH, namespace, ENGINE_LABEL)
    assert items == [] and version
    cluster.apply([configmap("a", "e1"), configmap("unlabelled", None)], namespace)

    stream = kube.watch_objects(PATH, namespace, ENGINE_LABEL, version, timeout=30)
    seen = [(e["type"], e["object"]["metadata"]["name"]) for e in next(stream)]
    assert seen == [("ADDED", "a")]
    # More events are on their way when the operator stops reading (a 410, a shutdown).
    cluster.apply([configmap("b", "e2"), configmap("c", "e3")], namespace)
    time.sleep(0.5)
    stream.close()

    # The pool hands out its most recent connection first: every later call must still be answered.
    for _ in range(3):
        items, _ = kube.list_with_version(PATH, namespace, ENGINE_LABEL)
        assert sorted(i["metadata"]["name"] for i in items) == ["a", "b", "c"]

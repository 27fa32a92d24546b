"""render(engine, replicas) -> the Kubernetes objects that run it. Pure: no I/O."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from roundhouse_api import API_VERSION, Family, InferenceEngine
from roundhouse_api.families import DEFAULT_HELPER_IMAGE, FAMILIES, ContainerPlan, gpu_count
from roundhouse_api.families.base import cache_path as family_cache_path

FIELD_MANAGER = "roundhouse"
ENGINE_LABEL = "roundhouse.dev/engine"
FAMILY_LABEL = "roundhouse.dev/family"
HASH_ANNOTATION = "roundhouse.dev/rendered-hash"
GPU_RESOURCE = "nvidia.com/gpu"
CACHE_VOLUME = "model-cache"


def runs_workload(engine: InferenceEngine) -> bool:
    """External APIs and engines given by spec.endpoints run elsewhere: no Deployment."""
    return FAMILIES[engine.spec.engine].runs_workload(engine.spec)


def labels(engine: InferenceEngine) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": f"{engine.spec.engine.value}-engine",
        "app.kubernetes.io/instance": engine.metadata.name,
        "app.kubernetes.io/component": "inference-engine",
        "app.kubernetes.io/part-of": "roundhouse",
        "app.kubernetes.io/managed-by": "roundhouse-operator",
        ENGINE_LABEL: engine.metadata.name,
        FAMILY_LABEL: engine.spec.engine.value,
    }


def selector(engine: InferenceEngine) -> dict[str, str]:
    return {ENGINE_LABEL: engine.metadata.name}


def owner_reference(engine: InferenceEngine) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "InferenceEngine",
        "name": engine.metadata.name,
        "uid": engine.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(engine: InferenceEngine, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": engine.metadata.namespace,
        "labels": labels(engine),
        "ownerReferences": [owner_reference(engine)],
    }


def service_name(engine: InferenceEngine) -> str:
    return engine.metadata.name


def port(engine: InferenceEngine) -> int:
    return FAMILIES[engine.spec.engine].port(engine.spec)


def endpoint_url(engine: InferenceEngine) -> str:
    """The in-cluster base URL of the engine's OpenAI API."""
    if engine.spec.engine == Family.EXTERNAL and engine.spec.external:
        return engine.spec.external.base_url
    if engine.spec.endpoints:
        return engine.spec.endpoints[0].rstrip("/") + "/v1"
    return f"http://{service_name(engine)}.{engine.metadata.namespace}.svc:{port(engine)}/v1"


def cache_path(engine: InferenceEngine) -> str:
    return family_cache_path(engine.spec)


def cache_claim_name(engine: InferenceEngine) -> str | None:
    cache = engine.spec.cache
    if cache is None:
        return None
    if cache.existing_claim:
        return cache.existing_claim
    return f"{engine.metadata.name}-models" if cache.size else None


def _plan(engine: InferenceEngine, helper_image: str) -> ContainerPlan:
    return FAMILIES[engine.spec.engine].container(engine.spec, cache_path(engine), helper_image)


def _node_affinity(engine: InferenceEngine) -> dict[str, Any] | None:
    """The user's affinity with the GPU product/memory requirements ANDed into every node term."""
    spec = engine.spec
    exprs: list[dict[str, Any]] = []
    if spec.gpu_product:
        exprs.append({"key": "nvidia.com/gpu.product", "operator": "In", "values": [spec.gpu_product]})
    if spec.gpu_memory_mi_b:
        exprs.append({"key": "nvidia.com/gpu.memory", "operator": "Gt", "values": [str(spec.gpu_memory_mi_b - 1)]})
    affinity = copy.deepcopy(spec.affinity) if spec.affinity else None
    if not exprs:
        return affinity
    affinity = affinity or {}
    required = affinity.setdefault("nodeAffinity", {}).setdefault(
        "requiredDuringSchedulingIgnoredDuringExecution", {"nodeSelectorTerms": []}
    )
    terms = required.setdefault("nodeSelectorTerms", [])
    if not terms:
        terms.append({})
    for term in terms:
        term.setdefault("matchExpressions", []).extend(copy.deepcopy(exprs))
    return affinity


def _resources(engine: InferenceEngine) -> dict[str, Any]:
    resources = copy.deepcopy(engine.spec.resources) if engine.spec.resources else {}
    gpus = gpu_count(engine.spec)
    if gpus:
        resources.setdefault("limits", {})[GPU_RESOURCE] = gpus
        resources.setdefault("requests", {})[GPU_RESOURCE] = gpus
    return resources


def _probes(engine: InferenceEngine, plan: ContainerPlan) -> dict[str, Any]:
    probes_cfg = engine.spec.probes
    period = probes_cfg.period_seconds if probes_cfg else 10
    startup_timeout = probes_cfg.startup_timeout_seconds if probes_cfg else 1800
    # Fast while starting (never slower than the period after startup), over the same total window.
    startup_period = min(period, FAMILIES[engine.spec.engine].startup_probe_period_seconds)
    http = {"httpGet": {"path": plan.health_path, "port": "http"}}
    ready_check: dict[str, Any] = (
        {"exec": {"command": plan.readiness_exec}} if plan.readiness_exec
        else {"httpGet": {"path": plan.readiness_path, "port": "http"}} if plan.readiness_path
        else http
    )  # fmt: skip
    return {
        # Large models take many minutes to load; liveness must not kill them meanwhile.
        "startupProbe": {
            **ready_check,
            "periodSeconds": startup_period,
            "timeoutSeconds": 5,
            "failureThreshold": max(1, startup_timeout // startup_period),
        },
        "readinessProbe": {**ready_check, "periodSeconds": period, "failureThreshold": 3, "timeoutSeconds": 5},
        "livenessProbe": {**http, "periodSeconds": period, "failureThreshold": 6, "timeoutSeconds": 5},
    }


def deployment(engine: InferenceEngine, replicas: int, helper_image: str = DEFAULT_HELPER_IMAGE) -> dict[str, Any]:
    spec = engine.spec
    plan = _plan(engine, helper_image)
    family = FAMILIES[spec.engine]
    assert family.image is not None, f"{spec.engine} has no image"
    container = {
        **plan.container,
        "image": spec.image or family.image,
        "resources": _resources(engine),
        **_probes(engine, plan),
        # An engine that exits on a bad flag says why in its log: Kubernetes copies the log's tail into
        # the container status, and the operator shows it on the engine.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if family.stop_delay_seconds:
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": family.stop_delay_seconds}}}
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    container["env"] = [*container.get("env", []), *copy.deepcopy(spec.env)]
    claim = cache_claim_name(engine)
    cache_volume: dict[str, Any] = (
        {"name": CACHE_VOLUME, "persistentVolumeClaim": {"claimName": claim}}
        if claim
        else {"name": CACHE_VOLUME, "emptyDir": {}}
    )
    mounts = [{"name": CACHE_VOLUME, "mountPath": cache_path(engine)}]
    container["volumeMounts"] = [*mounts, *container.get("volumeMounts", [])]
    init = [{**c, "volumeMounts": copy.deepcopy(mounts)} for c in plan.init_containers]
    sidecars = [{**c, "volumeMounts": copy.deepcopy(mounts)} for c in plan.sidecars]
    tolerations: list[dict[str, Any]] = []
    if gpu_count(spec):
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    tolerations += copy.deepcopy(spec.tolerations)
    pod: dict[str, Any] = {
        "containers": [container, *sidecars],
        # The grace period covers the preStop delay and the engine's own shutdown.
        "terminationGracePeriodSeconds": 30 + family.stop_delay_seconds,
        "volumes": [cache_volume, *plan.extra_volumes],
        "enableServiceLinks": False,
    }
    if init:
        pod["initContainers"] = init
    if tolerations:
        pod["tolerations"] = tolerations
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    affinity = _node_affinity(engine)
    if affinity:
        pod["affinity"] = affinity
    # GPUs are scarce: never surge an extra GPU replica during a rollout.
    strategy = (
        {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
        if gpu_count(spec)
        else {"type": "RollingUpdate"}
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(engine, engine.metadata.name),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector(engine)},
            "strategy": strategy,
            "template": {"metadata": {"labels": labels(engine)}, "spec": pod},
        },
    }


def service(engine: InferenceEngine) -> dict[str, Any]:
    p = port(engine)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(engine, service_name(engine)),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(engine),
            "ports": [{"name": "http", "port": p, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def cache_claim(engine: InferenceEngine) -> dict[str, Any] | None:
    cache = engine.spec.cache
    if cache is None or cache.existing_claim or not cache.size:
        return None
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": cache.size}}}
    if cache.storage_class_name:
        spec["storageClassName"] = cache.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(engine, f"{engine.metadata.name}-models"),
        "spec": spec,
    }


def with_hash(obj: dict[str, Any]) -> dict[str, Any]:
    """Stamp the object with a hash of itself, so an unchanged object is not applied again."""
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
    obj["metadata"].setdefault("annotations", {})[HASH_ANNOTATION] = digest
    return obj


def render(engine: InferenceEngine, replicas: int, helper_image: str = DEFAULT_HELPER_IMAGE) -> list[dict[str, Any]]:
    """Every object an engine needs, in apply order; empty for engines that run elsewhere.
    `helper_image` (the operator's own) runs the pod's model fetch and pull helpers."""
    if not runs_workload(engine):
        return []
    objects = [cache_claim(engine), deployment(engine, replicas, helper_image), service(engine)]
    return [with_hash(o) for o in objects if o is not None]

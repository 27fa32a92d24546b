"""engine_status(observed) -> the InferenceEngine's status: phase and conditions. Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from roundhouse_api import Condition, EngineStatus, InferenceEngine, Phase
from roundhouse_api.families import FAMILIES

from .adapters import AdapterReport, adapter_statuses, adapters_condition_state, termination_logs
from .fit import Fit
from .plan import EnginePlan
from .render import endpoint_url, runs_workload, selector

FAILING_WAIT_REASONS = {"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError",
                        "InvalidImageName", "ErrImageNeverPull", "CreateContainerError",
                        "RunContainerError"}  # fmt: skip


@dataclass(frozen=True)
class Observed:
    """Everything the operator saw about one engine in this pass."""

    engine: InferenceEngine
    plan: EnginePlan
    deployment: dict[str, Any] | None
    pods: list[dict[str, Any]]
    fit: Fit
    config_error: str | None = None
    probe_ok: bool | None = None  # engines that run elsewhere: the last probe
    probe_message: str = ""
    mode_name: str | None = None
    apply_error: tuple[str, str] | None = None  # (kind, the API server's message) of an object it refused
    missing_fallbacks: tuple[str, ...] | list[str] = ()  # spec.routing.fallback names with no engine
    missing_secret: str | None = None  # a Secret the spec names that the operator could not read, in words
    adapters: AdapterReport | None = None  # runtime-loaded adapters: what the replicas listed after this pass


def _pod_condition(pod: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in pod.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == kind:
            return dict(cond)
    return None


def unschedulable(pods: list[dict[str, Any]]) -> str | None:
    """The scheduler's own message for the first pod it could not place."""
    for pod in pods:
        cond = _pod_condition(pod, "PodScheduled")
        if cond and cond.get("status") == "False":
            return str(cond.get("message") or cond.get("reason") or "Unschedulable")
    return None


def failing(pods: list[dict[str, Any]]) -> str | None:
    for pod in pods:
        if pod.get("status", {}).get("phase") == "Failed":
            return f"pod {pod['metadata']['name']} failed: {pod['status'].get('message', '')}".strip()
        status = pod.get("status", {}) or {}
        for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in FAILING_WAIT_REASONS:
                text = f"pod {pod['metadata']['name']}: {waiting['reason']}: {waiting.get('message', '')}".strip()
                return text + last_termination(cs)
    return None


# How the kubelet says a container's env names a Secret (or a key of one) that is not there.
KUBELET_MISSING_SECRET = re.compile(r'secret "(?P<name>[^"]+)" not found|couldn\'t find key (?P<key>\S+) in Secret '
                                    r'(?P<ns>[^/\s]+)/(?P<secret>\S+)')  # fmt: skip


def pods_missing_secret(o: Observed) -> str | None:
    """The Secret a pod cannot start without, from the kubelet's CreateContainerConfigError, with the
    field of the spec that names it when it is the Hugging Face token."""
    ref = o.engine.spec.model.hf_token_secret_ref
    for pod in o.pods:
        status = pod.get("status", {}) or {}
        for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") != "CreateContainerConfigError":
                continue
            found = KUBELET_MISSING_SECRET.search(waiting.get("message") or "")
            if found is None:
                continue
            name = found["name"] or found["secret"]
            what = f"Secret {name} does not exist" if found["name"] else f"Secret {name} has no key {found['key']!r}"
            field = "spec.model.hfTokenSecretRef: " if ref is not None and ref.name == name else ""
            return f"{field}{what} (pod {pod['metadata']['name']} cannot start until it does)"
    return None


def last_termination(container_status: dict[str, Any]) -> str:
    """How the container last ended (exit code, reason, its last message), for crash loops."""
    ended = ((container_status.get("lastState") or {}).get("terminated")) or {}
    if not ended:
        return ""
    message = (ended.get("message") or "").strip()
    said = f": {message[-500:]}" if message else ""
    return f"; last exit code {ended.get('exitCode')} ({ended.get('reason', 'Error')}){said}"


def _phase(o: Observed, ready: int) -> tuple[Phase, str]:
    if o.config_error:
        return Phase.FAILED, o.config_error
    if o.apply_error:
        kind, why = o.apply_error
        return Phase.FAILED, f"the API server refused the engine's {kind}: {why}"
    if not o.plan.active:
        mode = f"engine mode {o.mode_name!r}" if o.mode_name else "the engine mode"
        stopping = f"; {len(o.pods)} pod(s) stopping" if o.pods else ""
        return Phase.STANDBY, f"{mode} has switched the {o.engine.spec.engine.value} family off{stopping}"
    if o.plan.state is not None and (on_demand := _on_demand_phase(o)) is not None:
        return on_demand
    if not runs_workload(o.engine):
        if o.probe_ok is None:
            return Phase.PENDING, "waiting for the first probe"
        return (Phase.READY if o.probe_ok else Phase.FAILED), o.probe_message
    if o.plan.held:
        return Phase.PENDING, "waiting for the outgoing engine family's pods to stop (GPUs to free up)"
    desired = o.plan.replicas
    if desired == 0:
        return Phase.STANDBY, "scaled to zero replicas"
    if ready >= desired:
        return Phase.READY, f"{ready}/{desired} replicas ready"
    if ready > 0:
        return Phase.DEGRADED, f"{ready}/{desired} replicas ready"
    if message := unschedulable(o.pods):
        return Phase.PENDING, message
    if message := failing(o.pods):
        if secret := pods_missing_secret(o):
            return Phase.FAILED, secret
        return Phase.FAILED, message
    return Phase.STARTING, f"0/{desired} replicas ready: loading"


def _on_demand_phase(o: Observed) -> tuple[Phase, str] | None:
    """Mode onDemand: draining, standby and waiting engines say so; starting ones are observed as usual."""
    if o.plan.state == "draining":
        return Phase.DRAINING, o.plan.note
    if o.plan.state in ("standby", "waiting", "stopping") and o.plan.replicas == 0:
        stopping = f"; {len(o.pods)} pod(s) stopping" if o.pods and o.plan.state != "stopping" else ""
        return Phase.STANDBY, o.plan.note + stopping
    return None


def condition(kind: str, ok: bool | None, reason: str, message: str, generation: int, now: datetime) -> Condition:
    status = "Unknown" if ok is None else ("True" if ok else "False")
    return Condition(type=kind, status=status, reason=reason, message=message, last_transition_time=now,
                     observed_generation=generation)  # fmt: skip


def references_condition(o: Observed, gen: int, now: datetime) -> Condition:
    """References: whether what the spec names exists: the engines spec.routing.fallback names (re-checked
    as they come and go) and the Secrets (the operator's own read, or the kubelet's report on the pods)."""
    if secret := o.missing_secret or pods_missing_secret(o):
        return condition("References", False, "MissingSecret", secret, gen, now)
    if o.missing_fallbacks:
        message = (
            f"spec.routing.fallback names engines that do not exist in this namespace: {', '.join(o.missing_fallbacks)}"
        )
        return condition("References", False, "MissingFallback", message, gen, now)
    return condition("References", True, "Resolved", "every engine and Secret it names exists", gen, now)


def applied_condition(o: Observed, workload: bool, gen: int, now: datetime) -> Condition:
    """Applied: whether the API server took the objects rendered for the engine (its message if not)."""
    if o.apply_error:
        kind, why = o.apply_error
        return condition("Applied", False, f"Refused{kind}", why, gen, now)
    if not workload:
        return condition("Applied", True, "NoWorkload", "runs outside this cluster", gen, now)
    return condition("Applied", True, "Applied", "the rendered objects are applied", gen, now)


def keep_transition_times(new: list[Condition], old: list[Condition]) -> list[Condition]:
    """A condition whose status did not change keeps its lastTransitionTime."""
    previous = {c.type: c for c in old}
    out = []
    for cond in new:
        prev = previous.get(cond.type)
        if prev is not None and prev.status == cond.status:
            cond = cond.model_copy(update={"last_transition_time": prev.last_transition_time})
        out.append(cond)
    return out


def engine_status(o: Observed, previous: EngineStatus | None, now: datetime) -> EngineStatus:
    """The status the operator writes for one engine."""
    gen = o.engine.metadata.generation
    dstatus = (o.deployment or {}).get("status", {}) or {}
    ready = int(dstatus.get("readyReplicas", 0) or 0) if o.plan.active else 0
    phase, message = _phase(o, ready)
    workload = runs_workload(o.engine)
    unsched = unschedulable(o.pods)
    if not workload:
        scheduled = condition("Scheduled", True, "NoWorkload", "runs outside this cluster", gen, now)
    elif unsched:
        scheduled = condition("Scheduled", False, "Unschedulable", unsched, gen, now)
    elif o.pods:
        scheduled = condition("Scheduled", True, "Scheduled", f"{len(o.pods)} pod(s) placed", gen, now)
    else:
        scheduled = condition("Scheduled", None, "NoPods", "no pods to place", gen, now)
    conditions = [
        condition("ConfigValid", o.config_error is None, "InvalidSpec" if o.config_error else "Valid",
              o.config_error or "spec is valid", gen, now),
        applied_condition(o, workload, gen, now),
        references_condition(o, gen, now),
        scheduled,
        condition("ModelFits", o.fit.fits, o.fit.reason, o.fit.message, gen, now),
        condition("Ready", phase == Phase.READY, phase.value, message, gen, now),
    ]  # fmt: skip
    family = FAMILIES[o.engine.spec.engine]
    runtime = family.runtime_adapters(o.engine.spec)
    # Replicas that serve requests; for engines given by spec.endpoints, the endpoints that answered.
    if workload:
        serving = ready
    elif o.adapters is not None:
        serving = len(o.adapters.loaded)
    else:
        serving = len(o.engine.spec.endpoints or []) if o.probe_ok else 0
    failed = family.failed_adapters(o.engine.spec, termination_logs(o.pods)) if o.engine.spec.adapters else {}
    adapters = adapter_statuses(o.engine.spec.adapters, serving, o.adapters, runtime, failed)
    if adapters:
        ok, reason, text = adapters_condition_state(adapters, serving)
        conditions.append(condition("AdaptersLoaded", ok, reason, text, gen, now))
    replicas = int(dstatus.get("replicas", 0) or 0) if workload else 0
    desired = o.plan.replicas if workload else 0
    return EngineStatus(
        phase=phase,
        replicas=replicas,
        ready_replicas=ready,
        ready=f"{ready}/{desired}" if workload else ("1/1" if phase == Phase.READY else "0/1"),
        selector=",".join(f"{k}={v}" for k, v in selector(o.engine).items()),
        desired_replicas=desired if workload else None,
        endpoint=endpoint_url(o.engine),
        active=o.plan.active,
        observed_generation=gen,
        message=message,
        context_per_request=FAMILIES[o.engine.spec.engine].context_per_request(o.engine.spec),
        adapters=adapters,
        conditions=keep_transition_times(conditions, previous.conditions if previous else []),
    )

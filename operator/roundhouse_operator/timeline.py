"""Where an activation's time goes: from the request that asked for an engine to its pod being Ready.

The operator stamps each pod's milestones when its watch first shows them (sub-second, unlike the
API's one-second timestamps): created, scheduled, sandbox ready, container started, engine healthy
(the kubelet's startup probe passed) and Ready. An activation's timeline is those stamps after the
demand and the scale-up, as durations from one point to the next. Pure.
"""

from __future__ import annotations

from typing import Any

# In the order a pod reaches them.
POD_MILESTONES = ("created", "scheduled", "sandbox", "started", "healthy", "ready")
# Each phase of an activation ends at its point: the demand is the request that asked for the engine,
# "scale-up" is the operator applying replicas (after the GPUs were freed, for a swap).
PHASES = ("scale-up", *POD_MILESTONES)
WORDS = {"scale-up": "demand to scale-up", "created": "pod created", "scheduled": "scheduled",
         "sandbox": "sandbox ready", "started": "container started", "healthy": "engine healthy",
         "ready": "pod Ready", "drain-and-gone": "outgoing drained and gone, incoming pod created"}  # fmt: skip


def _true(pod: dict[str, Any], condition: str) -> bool:
    return any(c.get("type") == condition and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])  # fmt: skip


def reached(pod: dict[str, Any]) -> list[str]:
    """The milestones this pod's status shows (each implies the ones before it)."""
    status = pod.get("status") or {}
    containers = status.get("containerStatuses") or []
    shown = {
        "created": True,
        "scheduled": _true(pod, "PodScheduled"),
        "sandbox": _true(pod, "PodReadyToStartContainers"),
        "started": bool(containers) and all((c.get("state") or {}).get("running") for c in containers),
        "healthy": bool(containers) and all(c.get("started") for c in containers),
        "ready": _true(pod, "Ready"),
    }
    last = max((i for i, m in enumerate(POD_MILESTONES) if shown[m]), default=0)
    return list(POD_MILESTONES[: last + 1])


def stamp(times: dict[str, float], pod: dict[str, Any], now: float) -> dict[str, float]:
    """`times` with `now` for each milestone the pod shows for the first time."""
    new = [m for m in reached(pod) if m not in times]
    return {**times, **dict.fromkeys(new, now)} if new else times


def activation(demanded_at: float | None, scaled_at: float | None, pod: dict[str, float]) -> list[tuple[str, float]]:
    """(phase, seconds) in order, for the phases whose both ends are known; a phase the watch saw in
    the same batch as the one before it takes 0 s."""
    points: list[tuple[str, float | None]] = [("demand", demanded_at), ("scale-up", scaled_at),
                                              *((m, pod.get(m)) for m in POD_MILESTONES)]  # fmt: skip
    out: list[tuple[str, float]] = []
    previous: float | None = None
    for name, at in points:
        if at is None:
            continue
        if previous is not None:
            out.append((name, max(0.0, at - previous)))
        previous = at if previous is None else max(previous, at)
    return out


def describe(phases: list[tuple[str, float]]) -> str:
    """ "demand to scale-up 0.12s, pod created 0.05s, ..." for an event's message."""
    return ", ".join(f"{WORDS.get(p, p)} {s:.2f}s" for p, s in phases)


def newest(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The engine's most recently created pod (the one an activation started)."""
    return max(pods, key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"].get("name", "")),
               default=None)  # fmt: skip

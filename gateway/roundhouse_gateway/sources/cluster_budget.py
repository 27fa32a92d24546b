"""The Budget view in a cluster: from the EngineMode's status and events, the gateways' reports and
this gateway's own requests. Pure (the ClusterSource hands in what it watched and listed)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ValidationError

from roundhouse_api import EngineMode, InferenceEngine, Mode, OnDemandPolicy
from roundhouse_api.demand import GatewayReport, fold
from roundhouse_api.families.base import gpu_count
from roundhouse_gateway.routing.demand import Demand
from roundhouse_gateway.sources.budget import SWAP_REASONS, BudgetState, Holder, Swap

# The operator's GovernedEngine.state in the Budget view's words.
STATES = {"active": "running", "standby": "standby", "waiting": "waiting", "starting": "starting",
          "draining": "draining", "stopping": "stopping"}  # fmt: skip


def governed(raw_mode: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The EngineMode status's engines, when the mode in force is onDemand."""
    status = (raw_mode or {}).get("status") or {}
    return list(status.get("engines") or []) if status.get("activeMode") == Mode.ON_DEMAND.value else []


def engine_gpus(raw_engines: dict[str, dict[str, Any]], names: list[str]) -> dict[str, int]:
    """GPUs each named engine holds when it runs (its replicas times its GPUs per replica)."""
    out = {}
    for name in names:
        try:
            spec = InferenceEngine.model_validate(raw_engines[name]).spec
        except (KeyError, ValidationError):
            continue
        out[name] = spec.replicas * gpu_count(spec)
    return out


def held(raw_mode: dict[str, Any] | None, raw_engines: dict[str, dict[str, Any]]) -> dict[str, int]:
    """GPUs per engine that the EngineMode's status says are held now (for the history)."""
    holding = [e["name"] for e in governed(raw_mode)
               if STATES.get(e.get("state") or "") in ("running", "starting", "draining", "stopping")]  # fmt: skip
    return engine_gpus(raw_engines, holding)


def _epoch(stamp: Any) -> float | None:
    if isinstance(stamp, datetime):
        return stamp.timestamp()
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def holders(raw_mode: dict[str, Any], gpus: dict[str, int], own: Demand, own_key: str, now: float) -> list[Holder]:
    """Each governed engine as the status says, with requests in flight and waiting: this gateway's
    own (exact) plus what the other gateways last reported (a waiting gateway counts as one)."""
    annotations = (raw_mode.get("metadata") or {}).get("annotations") or {}
    others: list[GatewayReport] = fold({k: v for k, v in annotations.items() if k != own_key}, now)[1]
    out = []
    for e in ((raw_mode.get("status") or {}).get("engines")) or []:
        name, state = e["name"], STATES.get(e.get("state") or "")
        if state is None:  # not governed by onDemand (an external API): always on, holds nothing here
            continue
        waits = list(own.waiting.get(name) or [])
        waits_elsewhere = [r.waiting[name] for r in others if name in r.waiting]
        in_flight = own.in_flight.get(name, 0) + sum(r.in_flight.get(name, 0) for r in others)
        oldest = min([*waits, *waits_elsewhere], default=None)
        if oldest is None and state in ("waiting", "starting"):
            oldest = _epoch(e.get("demandedAt"))
        since = {"starting": e.get("activatedAt"), "running": e.get("activatedAt"),
                 "draining": e.get("drainingSince")}.get(state)  # fmt: skip
        out.append(Holder(name=name, family=str(e.get("family") or ""), gpus=gpus.get(name, 0), state=state,
                          in_flight=in_flight, waiting=len(waits) + len(waits_elsewhere), oldest_wait_at=oldest,
                          since=_epoch(since), message=str(e.get("message") or "")))  # fmt: skip
    return out


def swaps(events: list[dict[str, Any]]) -> list[Swap]:
    """The EngineMode's events that are steps of a swap (the engine is the first word of each)."""
    out = []
    for ev in events:
        reason = ev.get("reason") or ""
        if reason not in SWAP_REASONS:
            continue
        meta = ev.get("metadata") or {}
        at = _epoch(ev.get("lastTimestamp") or ev.get("eventTime") or meta.get("creationTimestamp"))
        message = str(ev.get("message") or "")
        out.append(Swap(at or 0.0, _engine_named(message), reason, message, _seq(meta.get("resourceVersion"))))
    return out


def _seq(resource_version: Any) -> int:
    """The order the API server stored the events in: etcd's resourceVersions are increasing integers
    (opaque in general: anything else sorts as 0, by time alone)."""
    try:
        return int(resource_version)
    except (TypeError, ValueError):
        return 0


def _engine_named(message: str) -> str:
    """The engine an operator's on-demand event is about ("x is ready…", "a request waits for x: …",
    "scaled x to zero…", "x: waiting…", "draining x…")."""
    for lead in ("a request waits for ", "scaled ", "draining ", "stopping "):
        if message.startswith(lead):
            return message[len(lead) :].split(" ", 1)[0].rstrip(":")
    return message.split(" ", 1)[0].rstrip(":")


def state(raw_mode: dict[str, Any] | None, raw_engines: dict[str, dict[str, Any]], own: Demand, own_key: str,
          events: list[dict[str, Any]], now: float) -> BudgetState | None:  # fmt: skip
    """The Budget view's data, or None when the mode in force is not onDemand."""
    if raw_mode is None or ((raw_mode.get("status") or {}).get("activeMode")) != Mode.ON_DEMAND.value:
        return None
    try:
        mode = EngineMode.model_validate(raw_mode)
    except ValidationError:
        return None
    gpus = engine_gpus(raw_engines, [e["name"] for e in governed(raw_mode)])
    budget = mode.status.gpu_budget if mode.status and mode.status.gpu_budget is not None else 0
    return BudgetState(budget, tuple(holders(raw_mode, gpus, own, own_key, now)), tuple(swaps(events)),
                       mode.spec.on_demand or OnDemandPolicy())  # fmt: skip

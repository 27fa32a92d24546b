"""The admin API: engines, the engine mode and switching it, as the admin page reads them."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import parse_qs

from roundhouse_api import Family, Mode, OnDemandPolicy, runs
from roundhouse_gateway.compare.window import Comparison
from roundhouse_gateway.engines.catalog import Catalog, Engine
from roundhouse_gateway.engines.fleet import Fleet
from roundhouse_gateway.http.wire import ClientError, Receive, Send, iso_time, read_body, respond_json
from roundhouse_gateway.keys.auth import Auth
from roundhouse_gateway.sources import budget

ModeSetter = Callable[[Mode], Awaitable[dict[str, Any]]]
BudgetReader = Callable[[float], Awaitable[tuple[budget.BudgetState | None, budget.History]]]


class Gateway(Protocol):
    """What the admin API reads of the gateway (app.Gateway)."""

    fleet: Fleet
    auth: Auth
    comparison: Comparison
    standalone: bool
    set_mode: ModeSetter | None
    budget: BudgetReader | None
    stale_since: Callable[[], float | None]

    @property
    def catalog(self) -> Catalog: ...


DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


async def handle(gw: Gateway, receive: Receive, send: Send, path: str, method: str, query: bytes = b"") -> None:
    """The admin API (its keys were checked by the caller)."""
    if path == "/admin/usage" and method == "GET":
        args = {k: v[-1] for k, v in parse_qs(query.decode(errors="replace")).items()}
        day = args.get("day")
        if day is not None and not DAY.fullmatch(day):
            raise ClientError(400, "day must be a date like 2026-12-01", "invalid_day", "day")
        # From the state store when it is shared: every replica shows the same totals.
        await respond_json(send, 200, await gw.auth.state.report(time.time(), args.get("key"), day))
    elif path == "/admin/compare" and method == "GET":
        await respond_json(send, 200, gw.comparison.report(time.time(), roles(gw.catalog)))
    elif path == "/admin/keys" and method == "GET":
        used = await gw.auth.state.month_used(gw.auth.clients.ring.names(), time.time())
        await respond_json(send, 200, gw.auth.describe(used))
    elif path == "/admin/engines" and method == "GET":
        await respond_json(send, 200, {"engines": [describe(gw, e) for e in gw.catalog.engines], "view": view(gw)})
    elif path == "/admin/budget" and method == "GET":
        now = time.time()
        state, history = await gw.budget(now) if gw.budget is not None else (None, budget.History())
        await respond_json(send, 200, {**budget.view(state, history, now), "view": view(gw)})
    elif path == "/admin/engine-mode" and method == "GET":
        await respond_json(send, 200, mode_view(gw))
    elif path == "/admin/engine-mode" and method == "PUT":
        raw = await read_body(receive, 64 * 1024)
        try:
            wanted = Mode(json.loads(raw)["mode"])
        except (ValueError, KeyError, TypeError):
            raise ClientError(400, f"body must be {{\"mode\": one of {[m.value for m in Mode]}}}", "invalid_mode",
                              "mode") from None  # fmt: skip
        if gw.set_mode is None:
            raise ClientError(501, "this gateway cannot change the engine mode", "not_supported")
        try:
            answer = await gw.set_mode(wanted)
        except LookupError as err:
            raise ClientError(404, str(err), "engine_mode_not_found") from None
        await respond_json(send, 200, answer)
    else:
        raise ClientError(404, f"Unknown admin path {method} {path}", "not_found")


def roles(catalog: Catalog) -> dict[tuple[str, str], dict[str, Any]]:
    """What the catalog says of each engine under each name it answers or shadows (for /admin/compare)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for e in catalog.engines:
        for name in e.served:
            out[(name, e.name)] = {"family": e.family.value, "weight": e.weight}
        if e.shadow_of:
            shadowed = {n for o in catalog.engines if e.shadow_of in o.served for n in o.served} | {e.shadow_of}
            for name in shadowed:
                out[(name, e.name)] = {"family": e.family.value, "shadowOf": e.shadow_of, "percent": e.shadow_percent}
    return out


def view(gw: Gateway) -> dict[str, Any]:
    """Whether the engines and mode shown (and routed by) are current, or the last view before the
    API server became unreachable, and since when."""
    since = gw.stale_since()
    return {"stale": since is not None, "staleSince": iso_time(since) if since is not None else None,
            "source": "config" if gw.standalone else "cluster"}  # fmt: skip


def on_standby(gw: Gateway, e: Engine) -> bool:
    """Mode onDemand: the engine waits on standby for a request (the mode lets it run, it does not)."""
    return gw.catalog.mode.mode == Mode.ON_DEMAND and e.governed and e.phase == "Standby"


def describe(gw: Gateway, e: Engine) -> dict[str, Any]:
    st = gw.fleet.stats[e.name]
    return {
        "name": e.name, "family": e.family.value, "models": sorted(e.served), "standby": on_standby(gw, e),
        "active": gw.catalog.mode.active(e) and not on_standby(gw, e), "ready": e.ready, "phase": e.phase,
        "message": e.message,
        "endpoints": [{"url": ep, "health": gw.fleet.health.state(ep), "error": gw.fleet.health.last_error(ep) or None,
                       "inFlight": gw.fleet.outstanding[ep]} for ep in e.endpoints],
        "inFlight": sum(gw.fleet.outstanding[ep] for ep in e.endpoints),
        "ttftP50Seconds": st.ttft_p50(), "tokensPerSecond": st.tokens_per_second(),
    }  # fmt: skip


def mode_view(gw: Gateway) -> dict[str, Any]:
    mode = gw.catalog.mode
    families = {m.value: family_view(gw, m) for m in Mode if m != Mode.ON_DEMAND}
    health = {}
    for fam in Family:
        eps = [ep for e in gw.catalog.engines if e.family == fam for ep in e.endpoints]
        if eps:
            health[fam.value] = "ok" if any(gw.fleet.health.healthy(ep) for ep in eps) else "unavailable"
    started = mode.switch_started_at
    return {
        "mode": mode.mode.value if mode.mode else None, "switching": mode.switching, "phase": mode.phase,
        "previous": mode.previous.value if mode.previous else None,
        "switchStartedAt": iso_time(started) if started is not None else None,
        "lastSwitchSeconds": mode.last_switch_seconds, "message": mode.message,
        "standalone": gw.standalone, "source": mode.source, "health": health, "families": families,
        "view": view(gw),
        # The on-demand settings, where this gateway can run the mode (a cluster's EngineMode, or a
        # standalone gateway that runs its engines itself); None where it cannot.
        "onDemand": on_demand_view(mode.on_demand) if gw.budget is not None else None,
    }  # fmt: skip


def on_demand_view(p: OnDemandPolicy) -> dict[str, Any]:
    return {"gpuBudget": p.gpu_budget, "minActiveSeconds": p.min_active_seconds, "idleSeconds": p.idle_seconds,
            "drainSeconds": p.drain_seconds, "maxWaitSeconds": p.max_wait_seconds}  # fmt: skip


def family_view(gw: Gateway, mode: Mode) -> dict[str, Any]:
    """What a mode would serve: its engines' health and recent throughput (auto: every engine)."""
    engines = [e for e in gw.catalog.engines if e.family != Family.EXTERNAL and runs(mode, e.family)]
    eps = [ep for e in engines for ep in e.endpoints]
    healthy = sum(1 for ep in eps if gw.fleet.health.healthy(ep))
    ttfts = sorted(t for e in engines for t in gw.fleet.stats[e.name].ttft)
    return {
        "engines": [e.name for e in engines], "endpoints": len(eps), "healthyEndpoints": healthy,
        "health": "none" if not eps else "ok" if healthy == len(eps) else "degraded" if healthy else "unavailable",
        "inFlight": sum(gw.fleet.outstanding[ep] for ep in eps),
        "tokensPerSecond": round(sum(gw.fleet.stats[e.name].tokens_per_second() for e in engines), 3),
        "ttftP50Seconds": ttfts[len(ttfts) // 2] if ttfts else None,
    }  # fmt: skip

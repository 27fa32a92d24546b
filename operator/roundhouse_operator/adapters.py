"""spec.adapters on running replicas (vLLM with runtime updates): what each replica lists, what to load
and unload there (pure), and the calls. Every pass recomputes it from what the replicas answer, so a
new replica gets the adapters once it is ready, and one that restarted gets them again."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from roundhouse_api import Adapter, AdapterStatus, InferenceEngine
from roundhouse_api.families import FAMILIES
from roundhouse_api.families.vllm import LOAD_ADAPTER_PATH, UNLOAD_ADAPTER_PATH, load_adapter_body, unload_adapter_body

from . import metrics
from .render import port

# Loading an adapter may download it first (a Hugging Face repo): far longer than a probe.
LOAD_TIMEOUT_SECONDS = 120.0
MESSAGE_MAX = 500


@dataclass(frozen=True)
class AdapterCall:
    """One POST to one replica: load or unload one adapter."""

    replica: str  # the replica's base URL
    path: str
    adapter: str
    body: dict[str, Any] = field(hash=False, compare=True)


@dataclass
class AdapterReport:
    """What the last pass saw: the adapters each replica that answered lists, and why one is missing."""

    loaded: dict[str, set[str]] = field(default_factory=dict)  # replica -> adapter names
    errors: dict[str, str] = field(default_factory=dict)  # adapter -> the engine's message, with the replica


def plan_calls(wanted: Mapping[str, str], replicas: Mapping[str, Mapping[str, str] | None]) -> list[AdapterCall]:
    """The calls that make every replica list exactly `wanted` (name -> source). A replica's listing
    maps name -> where it was loaded from; None (unreadable) leaves the replica alone. An adapter loaded
    from another source is unloaded and loaded again; unloads come first on each replica."""
    calls: list[AdapterCall] = []
    for replica in sorted(replicas):
        listed = replicas[replica]
        if listed is None:
            continue
        stale = sorted(n for n, root in listed.items() if n not in wanted or not same_source(root, wanted[n]))
        calls += [AdapterCall(replica, UNLOAD_ADAPTER_PATH, n, unload_adapter_body(n)) for n in stale]
        missing = sorted(n for n in wanted if n not in listed or n in stale)
        calls += [AdapterCall(replica, LOAD_ADAPTER_PATH, n, load_adapter_body(n, wanted[n])) for n in missing]
    return calls


def same_source(root: str, source: str) -> bool:
    """Whether a listed adapter's root is the spec's source. vLLM lists the lora_path it was given; an
    empty root (a listing that does not say) counts as the same."""
    return not root or root.rstrip("/") == source.rstrip("/")


def after_calls(listed: Mapping[str, str], done: list[AdapterCall], wanted: Mapping[str, str]) -> set[str]:
    """The names a replica lists once the calls that succeeded on it are applied."""
    names = set(listed)
    for call in done:
        if call.path == UNLOAD_ADAPTER_PATH:
            names.discard(call.adapter)
        elif call.adapter in wanted:
            names.add(call.adapter)
    return names


def termination_logs(pods: list[dict[str, Any]]) -> str:
    """The engine containers' last words: the log tails Kubernetes keeps when they exit (the rendered
    terminationMessagePolicy is FallbackToLogsOnError)."""
    texts = []
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            if cs.get("name") != "engine":
                continue
            for state in (cs.get("state") or {}, cs.get("lastState") or {}):
                if message := (state.get("terminated") or {}).get("message"):
                    texts.append(str(message))
    return "\n".join(texts)


def adapter_statuses(
    adapters: list[Adapter],
    ready: int,
    report: AdapterReport | None,
    runtime: bool,
    failed: Mapping[str, str] | None = None,
) -> list[AdapterStatus]:
    """status.adapters: on how many ready replicas each adapter is loaded. Adapters on the command line
    are on every ready replica (an engine that cannot load one exits: `failed` holds what it said);
    runtime ones are what the replicas listed after the last pass's calls."""
    out = []
    for a in adapters:
        if not runtime:
            out.append(AdapterStatus(name=a.name, loaded_replicas=ready, message=(failed or {}).get(a.name)))
            continue
        loaded = sum(1 for names in (report.loaded if report else {}).values() if a.name in names)
        message = report.errors.get(a.name) if report else None
        out.append(AdapterStatus(name=a.name, loaded_replicas=min(loaded, ready), message=message))
    return out


def adapters_condition_state(statuses: list[AdapterStatus], ready: int) -> tuple[bool | None, str, str]:
    """The AdaptersLoaded condition: (ok, reason, message)."""
    failed = [s for s in statuses if s.message]
    if failed:
        return False, "LoadFailed", "; ".join(f"{s.name}: {s.message}" for s in failed)
    if ready == 0:
        return None, "NoReadyReplicas", "no ready replica to load adapters on"
    short = [s.name for s in statuses if s.loaded_replicas < ready]
    if short:
        return False, "Loading", f"not yet on every ready replica: {', '.join(short)}"
    return True, "Loaded", f"{len(statuses)} adapter(s) on {ready} ready replica(s)"


def engine_message(status: int, text: str) -> str:
    """The engine's own words from an error answer (OpenAI's error.message, else the body), bounded."""
    message = text.strip()
    try:
        body = json.loads(text)
        if isinstance(body, dict):
            err = body.get("error")
            inner = err.get("message") if isinstance(err, dict) else None
            message = str(inner or body.get("message") or err or message)
    except ValueError:
        pass
    return f"HTTP {status}: {message[:MESSAGE_MAX]}"


def replica_urls(engine: InferenceEngine, pods: list[dict[str, Any]]) -> list[str]:
    """Base URLs of the replicas to load on: the given endpoints, else the ready pods' own addresses."""
    if engine.spec.endpoints:
        return [u.rstrip("/") for u in engine.spec.endpoints]
    p = port(engine)
    return sorted(f"http://{ip}:{p}" for pod in pods if is_ready(pod) and (ip := pod.get("status", {}).get("podIP")))


def is_ready(pod: dict[str, Any]) -> bool:
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


async def sync(http: httpx.AsyncClient, engine: InferenceEngine, urls: list[str]) -> AdapterReport:
    """Read every replica's /v1/models, make the calls that bring it to spec.adapters, report."""
    family = FAMILIES[engine.spec.engine]
    wanted = {a.name: a.source for a in engine.spec.adapters}
    listings = await asyncio.gather(*(_listing(http, u, family.loaded_adapters) for u in urls))
    replicas = dict(zip(urls, listings, strict=True))
    report = AdapterReport()
    calls = plan_calls(wanted, replicas)
    done = await asyncio.gather(*(_replica_calls(http, u, [c for c in calls if c.replica == u], report) for u in urls))
    for url, succeeded in zip(urls, done, strict=True):
        listed = replicas[url]
        if listed is not None:
            report.loaded[url] = after_calls(listed, succeeded, wanted)
    return report


async def _listing(
    http: httpx.AsyncClient, url: str, parse: Callable[[bytes], dict[str, str]]
) -> dict[str, str] | None:
    try:
        resp = await http.get(url + "/v1/models")
    except httpx.HTTPError:
        return None
    return parse(resp.content) if resp.status_code == 200 else None


async def _replica_calls(
    http: httpx.AsyncClient, url: str, calls: list[AdapterCall], report: AdapterReport
) -> list[AdapterCall]:
    """One replica's calls in order (an unload before the load of the same name); the ones that worked."""
    done = []
    for call in calls:
        kind = "load" if call.path == LOAD_ADAPTER_PATH else "unload"
        try:
            resp = await http.post(url + call.path, json=call.body, timeout=LOAD_TIMEOUT_SECONDS)
        except httpx.HTTPError as err:
            metrics.ADAPTER_CALLS.labels(kind, "error").inc()
            report.errors.setdefault(call.adapter, f"{url}: {type(err).__name__} {err}".strip())
            continue
        metrics.ADAPTER_CALLS.labels(kind, "ok" if resp.status_code < 300 else "refused").inc()
        if resp.status_code < 300:
            done.append(call)
        else:
            report.errors.setdefault(call.adapter, f"{url}: {engine_message(resp.status_code, resp.text)}")
    return done

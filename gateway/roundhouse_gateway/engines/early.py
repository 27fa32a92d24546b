"""A starting replica is routed to as soon as it answers the gateway's own probe, not when
Kubernetes next says Ready (the kubelet's next probe, the pod's status, the EndpointSlice and the
engine's status each add their delay). Only while a request waits for that engine: a replica that
Kubernetes does not call ready is used on the gateway's word for no one else. Pure.
"""

from __future__ import annotations

import dataclasses

from roundhouse_gateway.engines.catalog import Catalog, Engine

EARLY_PROBE_SECONDS = 0.1  # how often a waited-for engine's starting replicas are probed


def with_early(catalog: Catalog, confirmed: set[str]) -> Catalog:
    """The catalog with each engine's confirmed starting replicas among its endpoints (a Failed engine
    takes none: its pods restart)."""
    engines, changed = [], False
    for e in catalog.engines:
        early = tuple(ep for ep in e.starting if ep in confirmed and ep not in e.endpoints)
        if early and e.phase != "Failed":
            e = dataclasses.replace(e, endpoints=e.endpoints + early, ready=True)
            changed = True
        engines.append(e)
    return dataclasses.replace(catalog, engines=tuple(engines)) if changed else catalog


def still_starting(catalog: Catalog, confirmed: set[str]) -> set[str]:
    """The confirmed replicas that are still starting (the rest are ready, or gone)."""
    return confirmed & {ep for e in catalog.engines for ep in e.starting}


def to_probe(catalog: Catalog, engines: set[str], confirmed: set[str]) -> list[tuple[Engine, str]]:
    """The starting replicas of the waited-for `engines` that no probe has confirmed yet."""
    return [(e, ep) for e in catalog.engines if e.name in engines for ep in e.starting if ep not in confirmed]

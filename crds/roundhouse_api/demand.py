"""What each gateway tells the operator in mode onDemand: one annotation per gateway on the EngineMode.

A gateway writes its report when what it waits for changes (a request for a standby engine arrives:
one write per activation, however many requests wait), when it has seen an engine start to drain
and when its last request on that engine ends, and every REPORT_INTERVAL while it has requests in
flight or waiting (the report carries the last request time per engine, for idleSeconds and
least-recently-used eviction). Each gateway owns its own annotation key, so replicas never
overwrite each other, and a report older than REPORT_TTL is ignored (its gateway is gone).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError

REPORT_PREFIX = "gateways.roundhouse.dev/"
REPORT_INTERVAL = 10.0
REPORT_TTL = 3 * REPORT_INTERVAL
# A report this old is from a gateway that is gone (a restarted pod has a new name): the next report
# any gateway writes removes it, so the annotations do not pile up over rollouts.
REPORT_FORGET = 3600.0


class GatewayReport(BaseModel):
    """One gateway's report (epoch seconds; engine names as keys)."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    at: float = Field(description="When the gateway wrote it.")
    waiting: dict[str, float] = Field(default_factory=dict, description="Engine -> oldest request waiting for it.")
    in_flight: dict[str, int] = Field(default_factory=dict, alias="inFlight", description="Engine -> requests on it.")
    queued: dict[str, int] = Field(default_factory=dict, description="Engine -> requests waiting for it (autoscaling).")
    last_request: dict[str, float] = Field(default_factory=dict, alias="lastRequest",
                                           description="Engine -> its latest request.")  # fmt: skip
    engine_load: dict[str, float] = Field(default_factory=dict, alias="engineLoad", description="Engine -> requests"
                                          " its replicas say they hold (their own metrics: running and waiting,"
                                          " from every client), for autoscaled engines.")  # fmt: skip
    stopping: dict[str, int] = Field(default_factory=dict, description="Engine -> requests in flight on its replicas"
                                     " being stopped (status.stopping): the scale-down waits for them.")  # fmt: skip

    def wire(self) -> str:
        return json.dumps(self.model_dump(by_alias=True), separators=(",", ":"), sort_keys=True)


def report_key(gateway_id: str) -> str:
    """The annotation key for one gateway: a DNS label after the prefix (at most 63 characters)."""
    name = re.sub(r"[^a-z0-9-]+", "-", gateway_id.lower()).strip("-")[:63].strip("-")
    return REPORT_PREFIX + (name or "gateway")


@dataclass(frozen=True)
class EngineDemand:
    """Every fresh report, folded for one engine."""

    demanded_at: float | None = None
    last_request_at: float | None = None
    in_flight: int = 0


def forgotten(annotations: dict[str, str], now: float, keep: str) -> list[str]:
    """Report keys other than `keep` whose reports are older than REPORT_FORGET (or unreadable)."""
    out = []
    for key, value in annotations.items():
        if not key.startswith(REPORT_PREFIX) or key == keep:
            continue
        try:
            at = GatewayReport.model_validate_json(value).at
        except ValidationError:
            at = None
        if at is None or now - at > REPORT_FORGET:
            out.append(key)
    return sorted(out)


def readable(annotations: dict[str, str]) -> list[tuple[str, GatewayReport]]:
    """The gateways' reports among an EngineMode's annotations, by annotation key (unreadable ones skipped)."""
    out = []
    for key, value in annotations.items():
        if not key.startswith(REPORT_PREFIX):
            continue
        try:
            out.append((key, GatewayReport.model_validate_json(value)))
        except ValidationError:
            continue
    return out


def fold(annotations: dict[str, str], now: float) -> tuple[dict[str, EngineDemand], list[GatewayReport]]:
    """Per engine: the oldest waiting request, the latest request and the requests in flight, from the
    reports written within REPORT_TTL; and those reports (unreadable ones are skipped)."""
    reports = [report for _, report in readable(annotations) if now - report.at <= REPORT_TTL]
    names = {n for r in reports for n in (*r.waiting, *r.in_flight, *r.last_request)}
    out = {}
    for n in names:
        waits = [r.waiting[n] for r in reports if n in r.waiting]
        lasts = [r.last_request[n] for r in reports if n in r.last_request]
        out[n] = EngineDemand(
            demanded_at=min(waits) if waits else None,
            last_request_at=max(lasts) if lasts else None,
            in_flight=sum(r.in_flight.get(n, 0) for r in reports),
        )
    return out, reports


def drained(reports: list[GatewayReport], engine: str, since: float) -> bool:
    """Whether a drain that began at `since` is over: some gateway wrote after it began, and no fresh
    report has a request in flight on the engine."""
    return any(r.at >= since for r in reports) and not any(r.in_flight.get(engine, 0) for r in reports)


def switch_drained(reports: list[GatewayReport], engines: list[str], since: float) -> bool:
    """Whether a manual switch that began at `since` may stop its outgoing `engines` before its drain
    deadline: every gateway with a fresh report has written since the switch began (so each has seen
    it and stopped sending there) and none has a request in flight on them. No report: no (the
    deadline decides)."""
    return (
        bool(reports)
        and all(r.at >= since for r in reports)
        and not any(r.in_flight.get(e, 0) for r in reports for e in engines)
    )


def stopping_drained(reports: list[GatewayReport], engine: str, since: float) -> bool:
    """Whether the replicas of `engine` a scale-down took out of routing at `since` may stop: every gateway
    with a fresh report has written since (so each has seen it and routes there no more) and none has a
    request in flight on them. No report: no (the deadline decides)."""
    return bool(reports) and all(r.at >= since for r in reports) and not any(r.stopping.get(engine) for r in reports)

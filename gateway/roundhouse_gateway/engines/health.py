"""Per-endpoint health: active probes by family and a passive circuit breaker.

Closed -> (N consecutive failures) -> open for a cooldown -> half-open: one trial request;
its success closes the circuit, its failure opens it again. An active probe that fails marks
the endpoint down until a probe succeeds (llama-server's 503 "Loading model" included).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from roundhouse_api.families import FAMILIES
from roundhouse_gateway.engines.catalog import Engine


@dataclass
class EndpointHealth:
    failures: int = 0
    open_until: float = 0.0
    trial_in_flight: bool = False
    probe_ok: bool | None = None
    last_error: str = ""


class Health:
    def __init__(
        self, failures_to_open: int = 3, cooldown: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.failures_to_open = failures_to_open
        self.cooldown = cooldown
        self.now = clock
        self.endpoints: dict[str, EndpointHealth] = {}

    def _get(self, endpoint: str) -> EndpointHealth:
        h = self.endpoints.get(endpoint)
        if h is None:  # not setdefault: that builds an EndpointHealth on every call
            h = self.endpoints[endpoint] = EndpointHealth()
        return h

    def healthy(self, endpoint: str) -> bool:
        """Whether a request may go to `endpoint` now (a half-open circuit admits one trial)."""
        h = self._get(endpoint)
        if h.probe_ok is False:
            return False
        if h.open_until == 0.0:
            return True
        return self.now() >= h.open_until and not h.trial_in_flight

    def state(self, endpoint: str) -> str:
        h = self._get(endpoint)
        if h.probe_ok is False:
            return "down"
        if h.open_until == 0.0:
            return "ok"
        return "half-open" if self.now() >= h.open_until else "open"

    def last_error(self, endpoint: str) -> str:
        """Why the endpoint last failed a probe or a request ("" when it has not)."""
        return self._get(endpoint).last_error

    def attempt(self, endpoint: str) -> None:
        h = self._get(endpoint)
        if h.open_until and self.now() >= h.open_until:
            h.trial_in_flight = True

    def success(self, endpoint: str) -> None:
        h = self._get(endpoint)
        h.failures, h.open_until, h.trial_in_flight, h.last_error = 0, 0.0, False, ""

    def failure(self, endpoint: str, error: str) -> None:
        h = self._get(endpoint)
        h.failures += 1
        h.last_error = error
        if h.trial_in_flight or h.failures >= self.failures_to_open:
            h.open_until = self.now() + self.cooldown
        h.trial_in_flight = False

    def probed(self, endpoint: str, ok: bool, error: str = "") -> None:
        h = self._get(endpoint)
        h.probe_ok = ok
        if ok and h.open_until and h.failures:
            # The engine answers its health check again: let the next request be the trial.
            h.open_until = min(h.open_until, self.now())
        if not ok:
            h.last_error = error
        elif not h.failures:
            h.last_error = ""

    def forget_except(self, endpoints: set[str]) -> None:
        for ep in list(self.endpoints):
            if ep not in endpoints:
                del self.endpoints[ep]


def probe_path(engine: Engine) -> str:
    """The path the gateway's active probe reads for this engine's family."""
    return FAMILIES[engine.family].gateway_probe_path


def probe_ok(engine: Engine, status: int, body: bytes) -> tuple[bool, str]:
    """Judge a probe answer the way each family means it."""
    return FAMILIES[engine.family].probe_ok(status, body, engine.upstream_model)

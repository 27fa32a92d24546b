"""Prometheus metrics of the gateway (Prometheus naming conventions: base units, _total counters)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any, TypeVar, overload

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from roundhouse_gateway.hotmetrics import (
    CounterChild,
    GaugeChild,
    HistogramChild,
    HotCounter,
    HotGauge,
    HotHistogram,
)

M = TypeVar("M", bound=MetricWrapperBase)

REGISTRY = CollectorRegistry()
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

# The request path's metrics, updated about ten times a request from the event loop: lock-free
# (hotmetrics.py), with the samples prometheus_client's own would give.
REQUESTS = HotCounter("roundhouse_gateway_requests_total", "Requests answered, by model, engine, family and status.",
                      ["model", "engine", "family", "status"], REGISTRY)  # fmt: skip
DURATION = HotHistogram("roundhouse_gateway_request_duration_seconds", "Whole request, as the client saw it.",
                        ["family"], REGISTRY, LATENCY_BUCKETS)  # fmt: skip
TTFT = HotHistogram("roundhouse_gateway_time_to_first_token_seconds", "Request start to the first upstream byte.",
                    ["engine"], REGISTRY, LATENCY_BUCKETS)  # fmt: skip
UPSTREAM = HotHistogram("roundhouse_gateway_upstream_latency_seconds", "Upstream request to response headers.",
                        ["engine"], REGISTRY, LATENCY_BUCKETS)  # fmt: skip
TOKENS = HotCounter("roundhouse_gateway_tokens_total", "Tokens from the engines' usage reports.", ["engine", "type"],
                    REGISTRY)  # fmt: skip
IN_FLIGHT = HotGauge("roundhouse_gateway_in_flight_requests", "Requests in flight, by engine.", ["engine"], REGISTRY)
FAILOVERS = HotCounter("roundhouse_gateway_failovers_total", "Retries on another candidate, by the engine that"
                       " failed.", ["engine", "reason"], REGISTRY)  # fmt: skip
DECISIONS = HotCounter("roundhouse_gateway_routing_decisions_total", "Routing decisions, by reason.", ["reason"],
                       REGISTRY)  # fmt: skip
HEALTHY = Gauge("roundhouse_gateway_endpoint_healthy", "1 if the endpoint may receive requests.",
                ["engine", "endpoint"], registry=REGISTRY)  # fmt: skip


@overload
def child(metric: HotCounter, *values: str) -> CounterChild: ...
@overload
def child(metric: HotGauge, *values: str) -> GaugeChild: ...
@overload
def child(metric: HotHistogram, *values: str) -> HistogramChild: ...
@overload
def child(metric: M, *values: str) -> M: ...
@functools.lru_cache(maxsize=4096)
def child(metric: Any, *values: str) -> Any:
    """metric.labels(*values), remembered: labels() checks every value (prometheus_client's takes a lock
    too), and the hot path calls it nine times a request. Label values here come from the catalog only."""
    return metric.labels(*values)


WAITING = Gauge("roundhouse_gateway_requests_waiting", "Mode onDemand: requests waiting for their engine to start.",
                ["engine"], registry=REGISTRY)  # fmt: skip
ACTIVATIONS = Counter("roundhouse_gateway_activations_total",
                      "Mode onDemand: activations this gateway asked for, by reason.", ["engine", "reason"],
                      registry=REGISTRY)  # fmt: skip
WAIT_SECONDS = Histogram("roundhouse_gateway_activation_wait_seconds",
                         "Mode onDemand: how long a request waited for its engine, by outcome.", ["outcome"],
                         buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600), registry=REGISTRY)  # fmt: skip


class KeyUsage(Collector):
    """Per key name, read from the gateway's usage counts when Prometheus scrapes: key names come from
    the key file and models from the catalog ("" when none served it), so the label sets are bounded."""

    def __init__(self) -> None:
        self.usage: Any = None  # usage.Usage, given by the gateway's Auth

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("roundhouse_gateway_key_requests", "Requests answered, by key name and"
                                       " model.", labels=["key", "model"])  # fmt: skip
        tokens = CounterMetricFamily("roundhouse_gateway_key_tokens", "Tokens from the engines' usage reports, by"
                                     " key name, model and type.", labels=["key", "model", "type"])  # fmt: skip
        errors = CounterMetricFamily("roundhouse_gateway_key_errors", "Requests answered with an error, by key"
                                     " name, model and status.", labels=["key", "model", "status"])  # fmt: skip
        if self.usage is not None:
            for (key, model), row in sorted(self.usage.totals.items()):
                requests.add_metric([key, model], row.requests)
                tokens.add_metric([key, model, "prompt"], row.prompt_tokens)
                tokens.add_metric([key, model, "completion"], row.completion_tokens)
            for (key, model, status), n in sorted(self.usage.errors.items()):
                errors.add_metric([key, model, str(status)], n)
        yield from (requests, tokens, errors)


KEY_USAGE = KeyUsage()
REGISTRY.register(KEY_USAGE)
RATE_LIMITED = Counter("roundhouse_gateway_rate_limited_total", "Requests refused with 429, by key name and limit"
                       " (requests, tokens, insufficient_quota).", ["key", "limit"], registry=REGISTRY)  # fmt: skip
STATE_DEGRADED = Gauge("roundhouse_gateway_state_degraded", "1 while the state store (limits, budgets, usage) does"
                       " not answer and this replica counts on its own.", registry=REGISTRY)  # fmt: skip
STATE_CALLS = Counter("roundhouse_gateway_state_calls_total", "Calls to the state store, by operation (admit, write,"
                      " read, ping) and result (ok, error).", ["op", "result"], registry=REGISTRY)  # fmt: skip
STATE_UNWRITTEN = Gauge("roundhouse_gateway_state_unwritten_batches", "Batches of counts not yet in the state store.",
                        registry=REGISTRY)  # fmt: skip
STATE_ROUND_TRIPS = Counter("roundhouse_gateway_state_round_trips_total", "Round trips to the state store (a"
                            " pipeline of admissions is one; an embedded store's transaction is one).",
                            registry=REGISTRY)  # fmt: skip
SHADOW = Counter("roundhouse_gateway_shadow_requests_total", "Copies of requests for comparison (routing.shadow and"
                 " X-Roundhouse-Engine: ab), by model, engine and outcome (ok, error, shed).",
                 ["model", "engine", "outcome"], registry=REGISTRY)  # fmt: skip
AGREEMENT = Histogram("roundhouse_gateway_shadow_similarity", "Similarity of a copy's answer to the primary's (1:"
                      " the same words), by model and engine.", ["model", "engine"],
                      buckets=(0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0), registry=REGISTRY)  # fmt: skip

"""The request path's lock-free metrics expose what prometheus_client's own would, sample for sample."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from roundhouse_gateway.hotmetrics import HotCounter, HotGauge, HotHistogram

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def exposition(registry: CollectorRegistry) -> str:
    # Creation times differ between the two registries by construction: compare everything else.
    return re.sub(r"(_created\{[^}]*\}) [0-9.e+]+", r"\1 T", generate_latest(registry).decode())


def test_counters_gauges_and_histograms_expose_the_same_samples_as_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    c = (HotCounter("t_requests_total", "Requests.", ["model", "status"], ours),
         Counter("t_requests_total", "Requests.", ["model", "status"], registry=theirs))  # fmt: skip
    g = (HotGauge("t_in_flight", "In flight.", ["engine"], ours),
         Gauge("t_in_flight", "In flight.", ["engine"], registry=theirs))  # fmt: skip
    h = (HotHistogram("t_seconds", "Latency.", ["family"], ours, BUCKETS),
         Histogram("t_seconds", "Latency.", ["family"], buckets=BUCKETS, registry=theirs))  # fmt: skip
    for counter, gauge, histogram in zip(c, g, h, strict=True):
        counter.labels("m", "200").inc()
        counter.labels("m", "200").inc(2.5)
        counter.labels("", "503").inc()
        gauge.labels("a").inc()
        gauge.labels("a").inc()
        gauge.labels("a").dec()
        gauge.labels("b").set(7)
        for v in (0.0, 0.005, 0.0051, 0.3, 1, 119.9, 120, 500):  # on the bounds, between, past the last
            histogram.labels("vllm").observe(v)
        histogram.labels("ollama")  # a child with no observation is exposed too
    assert exposition(ours) == exposition(theirs)


def test_a_wrong_number_of_label_values_and_a_negative_increment_are_refused() -> None:
    registry = CollectorRegistry()
    counter = HotCounter("t_total", "T.", ["a", "b"], registry)
    with pytest.raises(ValueError, match="2 label values expected"):
        counter.labels("x")
    with pytest.raises(ValueError, match="only go up"):
        counter.labels("x", "y").inc(-1)


def test_a_name_registered_twice_is_refused_as_prometheus_client_refuses_it() -> None:
    registry = CollectorRegistry()
    HotCounter("t_total", "T.", ["a"], registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Counter("t_total", "T.", ["a"], registry=registry)

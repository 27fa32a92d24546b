"""Counters, gauges and histograms for the request path, exposed by prometheus_client at scrape time.

prometheus_client's metrics take a lock on every update, so that any thread may update them; the
gateway updates its request-path metrics about ten times a request, all from its event loop. These
keep plain numbers per label set instead (no lock: one thread writes, and /metrics is served by the
same loop), and a Collector turns them into the same samples prometheus_client's own would give:
`_total` and `_created` for counters, cumulative `_bucket`, `_count`, `_sum` and `_created` for
histograms. The names, labels and buckets are prometheus_client's to check (the MetricFamily types).
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

C = TypeVar("C")


class _Family(Collector, Generic[C]):
    """One metric's children by label values, registered as a collector."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, list(labelnames)
        self._children: dict[tuple[str, ...], C] = {}
        registry.register(self)

    def _new(self) -> C:
        raise NotImplementedError

    def labels(self, *values: str) -> C:
        """The child for these label values, made on first use (values as strings, one per label name)."""
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: {len(self.labelnames)} label values expected, got {len(values)}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new()
        return child

    def collect(self) -> Iterator[Metric]:
        raise NotImplementedError

    def describe(self) -> Iterator[Metric]:
        """The registry's check for names taken twice, at registration: the family, no children yet."""
        return self.collect()


class CounterChild:
    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        self.value += amount


class HotCounter(_Family[CounterChild]):
    """A labelled counter; `name` without the `_total` suffix, as prometheus_client's Counter takes it."""

    def _new(self) -> CounterChild:
        return CounterChild()

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, child in self._children.items():
            family.add_metric(list(key), child.value, created=child.created)
        yield family


class GaugeChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class HotGauge(_Family[GaugeChild]):
    def _new(self) -> GaugeChild:
        return GaugeChild()

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, child in self._children.items():
            family.add_metric(list(key), child.value)
        yield family


class HistogramChild:
    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds  # the upper bounds, +Inf last
        self.counts = [0] * len(bounds)  # per bucket, not cumulative: one increment an observation
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # le: a value equal to a bound counts in it
        self.sum += value


class HotHistogram(_Family[HistogramChild]):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry,
                 buckets: Sequence[float]) -> None:  # fmt: skip
        bounds = tuple(sorted(float(b) for b in buckets))
        self.bounds = bounds if bounds and bounds[-1] == math.inf else (*bounds, math.inf)
        self.les = [floatToGoString(b) for b in self.bounds]  # type: ignore[no-untyped-call]  # "+Inf", "1.0"
        super().__init__(name, documentation, labelnames, registry)

    def _new(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, child in self._children.items():
            total, buckets = 0, []
            for le, count in zip(self.les, child.counts, strict=True):
                total += count
                buckets.append((le, float(total)))
            family.add_metric(list(key), buckets, child.sum)
            family.add_sample(f"{self.name}_created", dict(zip(self.labelnames, key, strict=True)), child.created)
        yield family

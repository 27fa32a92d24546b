"""Standalone autoscaling: the gateway's own counts as a time series, and the autoscaler's answer."""

from __future__ import annotations

from roundhouse_api import InferenceEngine
from roundhouse_gateway.sources.local_scale import SAMPLE_REFRESH, Loads


def engine() -> InferenceEngine:
    return InferenceEngine.model_validate({"metadata": {"name": "e"}, "spec": {
        "engine": "llamacpp", "model": {"source": "/m.gguf", "servedName": "e"},
        "autoscaling": {"maxReplicas": 3, "targetRequestsPerReplica": 2, "scaleUpSeconds": 0,
                        "scaleDownSeconds": 10}}})  # fmt: skip


def test_samples_when_the_load_changes_and_while_it_lasts() -> None:
    loads = Loads(since=0)
    for t in (1, 2, 3):
        loads.sample("e", 2, 1, t, horizon=10)
    loads.sample("e", 2, 1, 3 + SAMPLE_REFRESH, horizon=10)
    loads.sample("e", 0, 0, 9, horizon=10)
    assert [(r.at, r.load) for r in loads.series["e"]] == [(1, 3), (3 + SAMPLE_REFRESH, 3), (9, 0)]
    loads.sample("e", 0, 0, 100, horizon=10)  # older than the window and REPORT_TTL: dropped but the last
    assert [r.at for r in loads.series["e"]] == [9, 100]


def test_want_scales_up_at_once_and_down_after_the_window() -> None:
    loads, e = Loads(since=0), engine()
    loads.sample("e", 5, 1, 20, horizon=10)
    assert want(loads, e, 20) == (3, 6, 3)
    loads.sample("e", 0, 0, 21, horizon=10)
    assert want(loads, e, 25) == (3, 0, 1)  # the burst is still in the down window (the load needs 1)
    assert want(loads, e, 32) == (1, 0, 1)


def want(loads: Loads, e: InferenceEngine, now: float) -> tuple[int, int, int]:
    """(replicas, load, what the load needs now) of the autoscaler's answer."""
    s = loads.want(e, now)
    return s.replicas, s.load, s.need

"""Prefix affinity (consistent hashing with bounded load) and engine-reported load: balance,
stability when a replica leaves, hot prefixes, and what routing says about them."""

from __future__ import annotations

import math
import random
import time
from collections import Counter

import pytest

from roundhouse_api import AutoRules, Family, Mode
from roundhouse_gateway.engines.catalog import Catalog, Engine, ModeState
from roundhouse_gateway.engines.load import EngineLoad, reported
from roundhouse_gateway.routing.affinity import PREFIX_CHARS, pick, prefix_key
from roundhouse_gateway.routing.route import Features, route

REPLICAS = [f"http://10.0.0.{i}:8080" for i in range(16)]


def keys(n: int, seed: int = 1) -> list[int]:
    rng = random.Random(seed)
    return [rng.getrandbits(64) for _ in range(n)]


def test_idle_replicas_each_get_a_fair_share_of_prefixes() -> None:
    owners = Counter(pick(k, REPLICAS, lambda ep: 0, 0.25)[0] for k in keys(20000))
    shares = [owners[ep] / 20000 * len(REPLICAS) for ep in REPLICAS]
    assert max(shares) < 1.35 and min(shares) > 0.65, shares  # 64 virtual nodes each


def test_a_replica_leaving_moves_only_its_own_prefixes() -> None:
    ks = keys(10000)
    before = {k: pick(k, REPLICAS, lambda ep: 0, 0.25)[0] for k in ks}
    gone = REPLICAS[5]
    after = {k: pick(k, [r for r in REPLICAS if r != gone], lambda ep: 0, 0.25)[0] for k in ks}
    moved = [k for k in ks if before[k] != after[k]]
    assert all(before[k] == gone for k in moved)
    assert len(moved) == sum(1 for k in ks if before[k] == gone) < 0.1 * len(ks)


@pytest.mark.parametrize("epsilon", [0.1, 0.25, 1.0])
def test_bounded_load_holds_for_a_hot_prefix_and_for_random_ones(epsilon: float) -> None:
    for ks in ([42] * 400, keys(400)):  # one prefix everybody shares; then independent prompts
        load: Counter[str] = Counter()
        for k in ks:  # none finishes: the worst case for balance
            ep, _ = pick(k, REPLICAS, load.__getitem__, epsilon)
            load[ep] += 1
            mean = sum(load.values()) / len(REPLICAS)
            # (1 + e) x the mean, or one more than the least loaded when whole requests cannot do better.
            assert max(load.values()) <= max((1 + epsilon) * mean, math.floor(mean) + 1), (load, mean)


def test_a_hot_prefix_stays_home_until_home_is_busy() -> None:
    load = Counter({REPLICAS[0]: 0})
    home, skipped = pick(7, REPLICAS[:4], load.__getitem__, 0.25)
    assert skipped == 0
    load[home] = 5  # home is far above the mean now
    spill, skipped = pick(7, REPLICAS[:4], load.__getitem__, 0.25)
    assert spill != home and skipped >= 1


def chat(system: str, *turns: str) -> dict[str, object]:
    msgs = [{"role": "system", "content": system}]
    for i, t in enumerate(turns):
        msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": t})
    return {"messages": msgs}


def test_the_key_is_the_conversations_opening_and_stays_across_turns() -> None:
    system = "You are a support agent for ACME. " * 40  # longer than PREFIX_CHARS
    assert len(system) > PREFIX_CHARS
    first = prefix_key(chat(system, "hi"), "chat")
    later = prefix_key(chat(system, "hi", "hello!", "and another thing"), "chat")
    other = prefix_key(chat("You are a poet. " * 80, "hi"), "chat")
    assert first == later != other
    short = prefix_key(chat("be brief", "q1"), "chat")
    assert short != prefix_key(chat("be brief", "q2"), "chat")  # short prompts: the whole prompt decides
    assert prefix_key({"prompt": "x" * 3000}, "completions") == prefix_key({"prompt": "x" * 2000}, "completions")
    assert prefix_key({"input": "x"}, "embeddings") is None


def eng(name: str, family: Family = Family.LLAMACPP, n: int = 4, **kw: object) -> Engine:
    return Engine(name=name, family=family, served=frozenset(["m"]), upstream_model="m",
                  endpoints=tuple(f"http://{name}-{i}:1" for i in range(n)), **kw)  # type: ignore[arg-type]  # fmt: skip


def where(catalog: Catalog, prefix: int | None, load: dict[str, float] | None = None) -> tuple[str, str]:
    d = route(Features("m", prefix=prefix), catalog, lambda ep: True, lambda ep: (load or {}).get(ep, 0))
    return d.candidates[0].endpoint, d.reason


def test_routing_keeps_a_prefix_on_one_replica_and_says_so() -> None:
    cat = Catalog((eng("l"),), ModeState(mode=Mode.AUTO))
    homes = {where(cat, k)[0] for k in [99] * 5}
    assert len(homes) == 1 and "prefix-affinity" in where(cat, 99)[1]
    assert len({where(cat, k)[0] for k in keys(50)}) == 4  # different prefixes spread
    home = where(cat, 99)[0]
    spilled, reason = where(cat, 99, {home: 10})
    assert spilled != home and "prefix-affinity:spill" in reason


def test_affinity_is_per_family_by_default_and_can_be_turned_off() -> None:
    external = Catalog((eng("x", Family.EXTERNAL),), ModeState(mode=Mode.AUTO))
    assert "least-loaded" in where(external, 99)[1]  # an external API caches nothing we can aim at
    off = Catalog((eng("l"),), ModeState(mode=Mode.AUTO, rules=AutoRules(prefix_affinity=False)))
    assert "least-loaded" in where(off, 99)[1]
    rr = Catalog((eng("l"),), ModeState(mode=Mode.AUTO, rules=AutoRules(prefix_affinity=False,
                                                                        balancing="roundRobin")))  # fmt: skip
    assert "round-robin" in where(rr, None)[1]


def test_round_robin_ignores_load_and_takes_turns() -> None:
    rr = Catalog((eng("l"),), ModeState(mode=Mode.AUTO, rules=AutoRules(balancing="roundRobin")))
    firsts = [route(Features("m"), rr, lambda ep: True, lambda ep: 0.0 if ep.endswith("0:1") else 9, t)
              .candidates[0].endpoint for t in range(8)]  # fmt: skip
    assert len(set(firsts)) == 4


LLAMA_METRICS = """# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 2
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 3
"""
VLLM_METRICS = """# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 4.0
vllm:num_requests_waiting{engine="1",model_name="m"} 1.0
"""

# SGLang 0.5.23 (observability/metrics_collector.py): gauges labelled per scheduler; with --dp-size 2
# each data-parallel copy reports its own.
SGLANG_METRICS = """# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{dp_rank="0",engine_type="unified",model_name="m",pp_rank="0",tp_rank="0"} 3.0
sglang:num_running_reqs{dp_rank="1",engine_type="unified",model_name="m",pp_rank="0",tp_rank="0"} 2.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{dp_rank="0",engine_type="unified",model_name="m",pp_rank="0",tp_rank="0"} 1.0
sglang:num_queue_reqs{dp_rank="1",engine_type="unified",model_name="m",pp_rank="0",tp_rank="0"} 0.0
"""


def test_load_is_read_from_each_familys_own_metrics() -> None:
    from roundhouse_api.families import FAMILIES

    assert reported(LLAMA_METRICS, FAMILIES[Family.LLAMACPP].load_metrics) == 5  # 2 processing + 3 deferred
    assert reported(VLLM_METRICS, FAMILIES[Family.VLLM].load_metrics) == 5  # waiting on two engine cores
    assert reported(SGLANG_METRICS, FAMILIES[Family.SGLANG].load_metrics) == 6  # 5 running + 1 queued, both copies
    assert reported(LLAMA_METRICS, ("vllm:num_requests_waiting",)) is None
    assert reported("not { prometheus", ("x",)) is None


def big_vllm_exposition(histograms: int = 30) -> str:
    """An exposition the size of a real vLLM's: histogram families, labels with spaces and braces in
    their values, a name that starts like a load gauge's, a timestamp."""
    lines = []
    for h in range(histograms):
        lines += [f"# HELP vllm:latency_{h}_seconds Histogram {h}.", f"# TYPE vllm:latency_{h}_seconds histogram"]
        lines += [f'vllm:latency_{h}_seconds_bucket{{le="{b}",model_name="m"}} {b * 3}' for b in range(1, 21)]
        lines += [f'vllm:latency_{h}_seconds_sum{{model_name="m"}} 12.5']
        lines += [f'vllm:latency_{h}_seconds_count{{model_name="m"}} 7']
    lines += [
        "# TYPE vllm:num_requests_running gauge",
        'vllm:num_requests_running{engine="0",model_name="a {b} c"} 3.0',
        'vllm:num_requests_running{engine="1",model_name="m"} 2.0 1733580000000',
        "# TYPE vllm:num_requests_running_peak gauge",
        'vllm:num_requests_running_peak{model_name="m"} 50.0',
        "# TYPE vllm:num_requests_waiting gauge",
        "vllm:num_requests_waiting 4",
    ]
    return "\n".join(lines) + "\n"


def test_load_lines_are_read_as_prometheus_client_reads_them() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from roundhouse_api.families import FAMILIES

    text = big_vllm_exposition()
    names = FAMILIES[Family.VLLM].load_metrics
    expected = sum(float(s.value) for f in text_string_to_metric_families(text) for s in f.samples if s.name in names)
    assert reported(text, names) == expected == 9.0  # 3 + 2 running, 4 waiting; the peak gauge is not one of them
    assert reported(text.replace("} 2.0 ", "} two "), names) is None  # a load line that is not a number


def test_a_stale_reading_is_ignored() -> None:
    load = EngineLoad(interval=0.05)
    load.record("ep", 7.0, own=0)
    assert load.others("ep") == 7.0
    time.sleep(0.2)
    assert load.others("ep") == 0.0 and load.others("unknown") == 0.0


def test_a_reading_counts_only_other_clients_requests() -> None:
    """A replica read while this gateway's own two requests ran there is idle once they end: the
    reading must not keep it looking busy (that turned affinity away from the replica holding a
    conversation's cache). Requests beyond this gateway's own are others' and count until stale."""
    load = EngineLoad()
    load.record("home", 2.0, own=2)
    assert load.others("home") == 0.0
    load.record("shared", 5.0, own=2)
    assert load.others("shared") == 3.0
    load.record("racing", 1.0, own=3)  # ours started after the engine counted: never below zero
    assert load.others("racing") == 0.0


def test_the_simulators_prefix_cache_reuses_leading_blocks_and_evicts_the_oldest() -> None:
    from tests.support.prefixcache import PrefixCache

    cache = PrefixCache(capacity_tokens=160)  # ten 16-token blocks
    system = "s" * 320  # five blocks
    assert cache.admit(system + "q1" * 40) == (100, 0)
    tokens, cached = cache.admit(system + "q2" * 40)
    assert tokens == 100 and cached == 80  # the shared system prompt: 5 blocks of 16 tokens
    cache.admit("x" * 640)  # ten new blocks push the old ones out
    assert cache.admit(system + "q1" * 40)[1] == 0
    assert PrefixCache(0).admit("abc" * 100) == (75, 0)

"""Mode onDemand against the real API server, the operator and the cluster gateway: a request for a
standby engine starts it within the GPU budget, the other engine drains and its pods go first,
held requests see no error (openai SDK, stream and not), idle engines scale to zero, alternating
demand swaps at most once per minActiveSeconds, and past maxWaitSeconds a 503 with Retry-After.

Pods run on the simulated GPU nodes; each engine's traffic goes to an engine simulator
(--endpoint-map), which is what lets a test hold a stream open during a swap."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from roundhouse_api.demand import GatewayReport, report_key
from tests.integration.test_operator import small
from tests.support import engines as real_engines
from tests.support import processes, tinygguf
from tests.support.cluster import Cluster, wait_until
from tests.support.processes import Process

pytestmark = pytest.mark.integration
KEY = "sk-on-demand"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "on-demand"


@pytest.fixture
def sims() -> Iterator[dict[str, Process]]:
    procs = {
        "alpha": processes.enginesim("vllm", "alpha", ["alpha"], ARTIFACTS, itl_ms=100, tokens=20).start(),
        "beta": processes.enginesim("llamacpp", "beta", ["beta"], ARTIFACTS).start(),
    }
    yield procs
    for p in procs.values():
        p.stop()


def mode(namespace: str, cluster: Cluster, **on_demand: Any) -> None:
    policy = {"gpuBudget": 8, "minActiveSeconds": 0, "drainSeconds": 10, "maxWaitSeconds": 60, **on_demand}
    cluster.apply({"apiVersion": "roundhouse.dev/v1alpha1", "kind": "EngineMode", "metadata": {"name": "default"},
                   "spec": {"mode": "onDemand", "onDemand": policy}}, namespace)  # fmt: skip


def engines(namespace: str, cluster: Cluster, gpus: dict[str, int] | None = None) -> None:
    gpus = gpus or {}
    a = gpus.get("alpha", 8)
    cluster.apply([small("alpha", "vllm", gpus=a, vllm={"tensorParallelSize": a}),
                   small("beta", "llamacpp", gpus=gpus.get("beta", 8))], namespace)  # fmt: skip


@pytest.fixture
def gateway(crds: Cluster, namespace: str, sims: dict[str, Process], tmp_path: Path) -> Iterator[Process]:
    extra = tuple(a for name, sim in sims.items() for a in ("--endpoint-map", f"{name}={sim.url}"))  # type: ignore[attr-defined]
    proc = processes.cluster_gateway(namespace, crds.kubeconfig, tmp_path, ARTIFACTS, [KEY], [], extra=extra,
                                     probe_interval=0.2).start()  # fmt: skip
    yield proc
    proc.stop()


def chat(url: str, model: str, stream: bool = False, timeout: float = 90) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=timeout,
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream},
    )


def phase(cluster: Cluster, name: str, ns: str) -> str:
    return str((cluster.get("ie", name, ns).get("status") or {}).get("phase", ""))


def pods_of(cluster: Cluster, ns: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in cluster.list("pods", ns):
        engine = (p["metadata"].get("labels") or {}).get("roundhouse.dev/engine")
        if engine:
            out[engine] = out.get(engine, 0) + 1
    return out


def events(cluster: Cluster, ns: str, reason: str, kind: str = "EngineMode") -> list[dict[str, Any]]:
    return [e for e in cluster.list("events", ns) if e["reason"] == reason and e["involvedObject"]["kind"] == kind]


def test_a_request_for_a_standby_engine_is_answered_after_the_swap(
    operator: Process, crds: Cluster, namespace: str, gateway: Process
) -> None:
    c, url = crds, gateway.url  # type: ignore[attr-defined]
    mode(namespace, c)
    engines(namespace, c)
    wait_until(lambda: phase(c, "alpha", namespace) == "Standby" and phase(c, "beta", namespace) == "Standby", 20,
               "both engines on standby")  # fmt: skip
    models = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert {m["id"] for m in models["data"]} >= {"alpha", "beta"}  # standby models stay listed
    # A report left by a gateway pod gone for two hours: the next report written removes it.
    gone = GatewayReport(at=time.time() - 7200, inFlight={"alpha": 3}).wire()
    c.kubectl("annotate", "enginemode", "default", f"{report_key('gateway-gone')}={gone}", namespace=namespace)

    first = chat(url, "alpha")
    assert first.status_code == 200, first.text
    assert "activated:alpha:" in first.headers["x-roundhouse-route-reason"]
    assert pods_of(c, namespace) == {"alpha": 1}
    annotations = c.get("em", "default", namespace)["metadata"]["annotations"]
    reports = [k for k in annotations if k.startswith("gateways.roundhouse.dev/")]
    assert len(reports) == 1 and report_key("gateway-gone") not in reports, reports

    seen: list[dict[str, int]] = []
    stop = threading.Event()

    def watch_pods() -> None:
        while not stop.is_set():
            seen.append(pods_of(c, namespace))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch_pods, daemon=True)
    watcher.start()
    # A stream on alpha (20 tokens, 100 ms apart) is running when beta is asked for.
    streamed: dict[str, Any] = {}

    def stream() -> None:
        r = chat(url, "alpha", stream=True)
        streamed.update(status=r.status_code, body=r.text, ended=time.monotonic())

    streamer = threading.Thread(target=stream)
    streamer.start()
    time.sleep(0.5)
    asked = time.monotonic()
    second = chat(url, "beta")
    answered = time.monotonic()
    streamer.join(30)
    stop.set()
    watcher.join(5)
    assert second.status_code == 200 and second.headers["x-roundhouse-engine"] == "beta", second.text
    assert "activated:beta:" in second.headers["x-roundhouse-route-reason"]
    assert streamed["status"] == 200 and streamed["body"].rstrip().endswith("data: [DONE]"), streamed
    assert streamed["ended"] <= answered  # the old engine's stream finished before the new one answered
    assert answered - asked < 10 + 15  # drainSeconds, and the pods' stop and start on simulated nodes
    assert not any(s.get("alpha") and s.get("beta") for s in seen), "both engines held the GPUs at once"
    stopped = events(c, namespace, "Stopped")
    assert stopped and "nothing left in flight" in stopped[-1]["message"], stopped
    assert events(c, namespace, "Draining", kind="InferenceEngine")  # the step is on the engine too
    st = c.get("em", "default", namespace)["status"]
    assert st["gpuBudget"] == 8 and st["activations"] >= 2
    states = {e["name"]: e.get("state") for e in st["engines"]}
    assert states == {"alpha": "standby", "beta": "active"}, states


def test_held_requests_see_no_error_through_the_openai_sdk(operator: Process, crds: Cluster, namespace: str,
                                                           gateway: Process) -> None:  # fmt: skip
    c, url = crds, gateway.url  # type: ignore[attr-defined]
    mode(namespace, c)
    engines(namespace, c)
    wait_until(lambda: phase(c, "beta", namespace) == "Standby", 20, "beta on standby")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=90)
    # Streaming first: the stream opens at once with ': waiting for beta' comments, then the tokens.
    chunks = list(client.chat.completions.create(model="beta", messages=[{"role": "user", "content": "x"}],
                                                 stream=True))  # fmt: skip
    assert chunks and "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    answer = client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "x"}])
    assert answer.choices[0].message.content


def test_a_stream_that_waits_gets_comment_lines_first(operator: Process, crds: Cluster, namespace: str,
                                                      gateway: Process) -> None:  # fmt: skip
    c, url = crds, gateway.url  # type: ignore[attr-defined]
    mode(namespace, c)
    engines(namespace, c)
    wait_until(lambda: phase(c, "beta", namespace) == "Standby", 20, "beta on standby")
    r = chat(url, "beta", stream=True)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.text.startswith(": waiting for beta\n\n"), r.text[:200]
    assert r.text.rstrip().endswith("data: [DONE]")


def test_past_max_wait_a_503_with_retry_after_and_the_engine_says_why(operator: Process, crds: Cluster,
                                                                       namespace: str,
                                                                       gateway: Process) -> None:  # fmt: skip
    c, url = crds, gateway.url  # type: ignore[attr-defined]
    mode(namespace, c, maxWaitSeconds=4)
    engines(namespace, c, gpus={"beta": 16})  # more than the budget: it can never start
    wait_until(lambda: phase(c, "beta", namespace) == "Standby", 20, "beta on standby")
    r = chat(url, "beta")
    assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1, r.text
    err = r.json()["error"]
    assert err["code"] == "engine_starting" and "maxWaitSeconds (4s)" in err["message"]
    # While a request waits for it, the mode says why beta cannot start (the gateways report the wait).
    answers: list[httpx.Response] = []
    waiting = threading.Thread(target=lambda: answers.append(chat(url, "beta", stream=True)))
    waiting.start()

    def degraded() -> dict[str, Any] | None:
        st = c.get("em", "default", namespace).get("status") or {}
        return st if st.get("phase") == "Degraded" else None

    em = wait_until(degraded, 4, "the mode Degraded while beta's request waits", interval=0.2)
    assert "needs 16 GPUs, more than the budget of 8" in em["message"], em
    assert next(e for e in em["engines"] if e["name"] == "beta")["state"] == "waiting"
    waiting.join(30)
    streamed = answers[0]  # the stream had started: the error is its last event
    assert streamed.status_code == 200 and '"code": "engine_starting"' in streamed.text
    assert streamed.text.rstrip().endswith("data: [DONE]")


def test_an_idle_engine_scales_to_zero_and_frees_the_budget(operator: Process, crds: Cluster, namespace: str,
                                                            gateway: Process) -> None:  # fmt: skip
    c, url = crds, gateway.url  # type: ignore[attr-defined]
    mode(namespace, c, idleSeconds=3)
    engines(namespace, c)
    wait_until(lambda: phase(c, "alpha", namespace) == "Standby", 20, "alpha on standby")
    assert chat(url, "alpha").status_code == 200
    wait_until(lambda: phase(c, "alpha", namespace) == "Standby" and not pods_of(c, namespace), 30,
               "alpha scaled to zero after idleSeconds")  # fmt: skip
    assert "no request for" in events(c, namespace, "Draining")[-1]["message"]
    # The mode's status is written by the pass after the engine's own (each engine's writes are a task).
    wait_until(lambda: c.get("em", "default", namespace)["status"]["gpusHeld"] == 0, 10, "the budget freed")


def test_alternating_demand_swaps_at_most_once_per_min_active(operator: Process, crds: Cluster, namespace: str,
                                                              gateway: Process) -> None:  # fmt: skip
    c, url = crds, gateway.url  # type: ignore[attr-defined]
    mode(namespace, c, minActiveSeconds=6, drainSeconds=1)
    engines(namespace, c)
    wait_until(lambda: phase(c, "alpha", namespace) == "Standby", 20, "alpha on standby")
    results: list[int] = []
    threads = []
    started = time.monotonic()
    for i in range(12):  # a request a second, alternating models
        t = threading.Thread(target=lambda m=("alpha", "beta")[i % 2]: results.append(chat(url, m).status_code))
        t.start()
        threads.append(t)
        time.sleep(1)
    for t in threads:
        t.join(90)
    elapsed = time.monotonic() - started
    assert results == [200] * 12, results
    stamps = sorted(datetime.fromisoformat(e["firstTimestamp"].replace("Z", "+00:00"))
                    for e in events(c, namespace, "Activating"))  # fmt: skip
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)]
    assert len(stamps) >= 2, "demand for the other engine never started it"
    # Event times have whole seconds: a gap may read up to 1 s short of minActiveSeconds.
    assert all(g >= 6 - 1 for g in gaps), (gaps, elapsed)


def test_an_operator_restarted_mid_swap_finishes_it_with_the_original_drain_deadline(
    operator: Process, crds: Cluster, namespace: str, gateway: Process, sims: dict[str, Process]
) -> None:
    c, url = crds, gateway.url  # type: ignore[attr-defined]
    mode(namespace, c, drainSeconds=4)
    engines(namespace, c)
    wait_until(lambda: phase(c, "alpha", namespace) == "Standby", 20, "alpha on standby")
    assert chat(url, "alpha").status_code == 200
    httpx.post(f"{sims['alpha'].url}/_sim/config", json={"itl_ms": 500})  # type: ignore[attr-defined]
    streaming = threading.Thread(target=lambda: chat(url, "alpha", stream=True))  # 10 s: longer than the drain
    streaming.start()
    time.sleep(0.5)
    answer: dict[str, httpx.Response] = {}
    held = threading.Thread(target=lambda: answer.update(r=chat(url, "beta")))
    held.start()
    wait_until(lambda: phase(c, "alpha", namespace) == "Draining", 10, "alpha draining")
    operator.kill()
    time.sleep(5)  # the drain deadline passes while no operator runs
    operator.start()
    restarted = time.monotonic()
    wait_until(lambda: not pods_of(c, namespace).get("alpha"), 30, "alpha's pods gone")
    gone_after = time.monotonic() - restarted
    held.join(60)
    streaming.join(30)
    assert answer["r"].status_code == 200 and answer["r"].headers["x-roundhouse-engine"] == "beta", answer["r"].text
    # The recorded drain had expired: it ended at once, not after a new drainSeconds.
    assert gone_after < 4, gone_after
    stopped = events(c, namespace, "Stopped")
    assert stopped and "drainSeconds (4s) passed" in stopped[-1]["message"], stopped


@pytest.fixture
def variant_servers(tmp_path: Path) -> Iterator[dict[str, Process]]:
    """Real llama-server processes for two context variants of one model (the engines' endpoints)."""
    gguf = tinygguf.write(tmp_path / "tiny.gguf", context_length=4096)
    procs = {name: real_engines.llama_server(real_engines.llama_container("tiny", ctx, ("--parallel", "1")), gguf,
                                             ARTIFACTS, name=f"llama-{name}").start(timeout=60)
             for name, ctx in (("small", 256), ("large", 2048))}  # fmt: skip
    yield procs
    for p in procs.values():
        p.stop()


def test_context_variants_start_the_smallest_that_fits_by_an_exact_count(
    operator: Process, crds: Cluster, namespace: str, variant_servers: dict[str, Process], tmp_path: Path
) -> None:
    """8k/32k in miniature (256/2048 tokens), one budget: a short prompt starts the small variant; a
    prompt the estimate would fit in it is counted by the running engine's tokenizer, needs the large
    one, and starts it (a swap on the simulated nodes); the real engine's usage agrees with the count."""
    c = crds
    mode(namespace, c)
    docs = []
    for name, ctx in (("small", 256), ("large", 2048)):
        doc = small(name, "llamacpp", gpus=8, llamacpp={"contextSize": ctx, "parallel": 1})
        doc["spec"]["model"]["servedName"] = "tiny"
        docs.append(doc)
    c.apply(docs, namespace)
    extra = tuple(a for n, p in variant_servers.items() for a in ("--endpoint-map", f"{n}={p.url}"))  # type: ignore[attr-defined]
    gw = processes.cluster_gateway(namespace, c.kubeconfig, tmp_path, ARTIFACTS, [KEY], [], extra=extra,
                                   probe_interval=0.2, name="gateway-variants").start()  # fmt: skip
    try:
        url = gw.url  # type: ignore[attr-defined]
        wait_until(lambda: phase(c, "small", namespace) == "Standby", 20, "variants on standby")
        short = chat(url, "tiny")
        assert short.status_code == 200 and short.headers["x-roundhouse-engine"] == "small", short.text
        body = {
            "model": "tiny",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": "the engine is a model " * 36}],
        }
        long = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                          timeout=90)  # fmt: skip
        assert long.status_code == 200 and long.headers["x-roundhouse-engine"] == "large", long.text
        reason = long.headers["x-roundhouse-route-reason"]
        assert "tokens:exact" in reason and "activated:large:" in reason, reason
        counted = int(reason.split("context:", 1)[1].split(",", 1)[0]) - 8
        assert counted == long.json()["usage"]["prompt_tokens"] > 256
        assert pods_of(c, namespace) == {"large": 1}  # the small variant made room
    finally:
        gw.stop()

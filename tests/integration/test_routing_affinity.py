"""Prefix affinity and engine-reported load through the real gateway: a conversation keeps landing on
the llama-server replica that cached its prefix (the engine's own cached_tokens say so), and a
replica that reports requests of other clients in its metrics is avoided."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import engines, processes, tinygguf
from tests.support.processes import Process

pytestmark = pytest.mark.integration
KEY = "sk-affinity"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "routing-affinity"


def config(tmp: Path, name: str, family: str, urls: list[str], rules: dict[str, Any] | None = None) -> Path:
    docs: list[dict[str, Any]] = [{"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine",
                                   "metadata": {"name": "m"},
                                   "spec": {"engine": family, "model": {"source": "/m/m.gguf", "servedName": "m"},
                                            "endpoints": urls}}]  # fmt: skip
    if rules is not None:
        docs.append({"apiVersion": "roundhouse.dev/v1alpha1", "kind": "EngineMode", "metadata": {"name": "m"},
                     "spec": {"mode": "auto", "autoRules": rules}})  # fmt: skip
    path = tmp / f"{name}.yaml"
    path.write_text("\n---\n".join(json.dumps(d) for d in docs))
    return path


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[list[Process]]:
    gguf = tinygguf.write(tmp_path / "tiny.gguf", context_length=2048)
    container = engines.llama_container("m", 4096, ("--parallel", "2"))
    procs = [engines.llama_server(container, gguf, ARTIFACTS, name=f"llama-{i}").start(timeout=60) for i in range(3)]
    yield procs
    for p in procs:
        p.stop()


def turn(url: str, messages: list[dict[str, str]]) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                      json={"model": "m", "messages": messages, "max_tokens": 4})  # fmt: skip


def test_each_conversation_returns_to_the_replica_that_cached_it(replicas: list[Process], tmp_path: Path) -> None:
    urls = [p.url for p in replicas]  # type: ignore[attr-defined]
    gw = processes.gateway(config(tmp_path, "affinity", "llamacpp", urls), ARTIFACTS, [KEY], []).start()
    try:
        url = gw.url  # type: ignore[attr-defined]
        for c in range(4):
            system = f"conversation {c}: " + "the engine is a model of the gateway " * 30  # > 1,024 characters
            messages = [{"role": "system", "content": system}]
            cached, prompts = [], []
            for t in range(3):
                messages.append({"role": "user", "content": f"question {t}"})
                r = turn(url, messages)
                assert r.status_code == 200, r.text
                assert "prefix-affinity" in r.headers["x-roundhouse-route-reason"]
                cached.append(r.json()["usage"]["prompt_tokens_details"]["cached_tokens"])
                prompts.append(r.json()["usage"]["prompt_tokens"])
                messages.append({"role": "assistant", "content": r.json()["choices"][0]["message"]["content"]})
            # After the first turn the replica already holds the system prompt and the earlier turns.
            # The first turn shares at most the chat template's opening with other conversations on its
            # replica (llama-server reuses any common prefix); every later turn finds its whole history.
            assert cached[0] < 0.1 * prompts[0], (cached, prompts)
            assert all(c > 0.9 * p for c, p in zip(cached[1:], prompts[:-1], strict=True)), (cached, prompts)
    finally:
        gw.stop()


@pytest.fixture
def sims() -> Iterator[list[Process]]:
    procs = [processes.enginesim("llamacpp", f"s{i}", ["m"], ARTIFACTS).start() for i in range(2)]
    yield procs
    for p in procs:
        p.stop()


def test_a_replica_busy_with_other_clients_is_avoided(sims: list[Process], tmp_path: Path) -> None:
    """Requests sent to replica 0 behind the gateway's back (another gateway's, say) show in its metrics;
    the gateway sends its own to replica 1 while that reading is fresh."""
    urls = [p.url for p in sims]  # type: ignore[attr-defined]
    rules = {"prefixAffinity": False}
    gw = processes.gateway(config(tmp_path, "load", "llamacpp", urls, rules), ARTIFACTS, [KEY], []).start()
    busy = sims[0]
    httpx.post(f"{busy.url}/_sim/config", json={"ttft_ms": 4000})  # type: ignore[attr-defined]
    others = [threading.Thread(target=lambda: httpx.post(
        f"{busy.url}/v1/chat/completions", timeout=30,  # type: ignore[attr-defined]
        json={"model": "m", "messages": [{"role": "user", "content": "x"}]})) for _ in range(3)]  # fmt: skip
    try:
        for t in others:
            t.start()
        metrics = ""
        for _ in range(20):  # the simulator reports them at once; the gateway scrapes every second
            metrics = httpx.get(f"{busy.url}/metrics").text  # type: ignore[attr-defined]
            if "llamacpp:requests_processing 3" in metrics:
                break
        assert "llamacpp:requests_processing 3" in metrics, metrics
        time.sleep(1.5)
        for i in range(6):
            assert turn(gw.url, [{"role": "user", "content": f"q{i}"}]).status_code == 200  # type: ignore[attr-defined]
        served = [httpx.get(f"{p.url}/_sim/config").json()["served"] for p in sims]  # type: ignore[attr-defined]
        assert served == [3, 6], served  # replica 0 got only the three sent behind the gateway's back
    finally:
        for t in others:
            t.join(10)
        gw.stop()

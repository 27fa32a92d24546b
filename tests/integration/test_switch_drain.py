"""A manual switch's drain (switchPolicy.drainSeconds) waits for the requests in flight on the outgoing
engines, and no longer: once every gateway reports nothing in flight there, the operator stops them,
so an idle switch is drain-free (the real operator and a real cluster gateway on the local control
plane; engine pods on simulated GPU nodes, their traffic to simulators)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import processes
from tests.support.cluster import Cluster, wait_until
from tests.support.processes import Process

pytestmark = pytest.mark.integration
KEY, ADMIN = "sk-drain", "admin-drain"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "switch-drain"
DRAIN = 30  # the deadline, far above what either switch here takes


def gpu_engine(name: str, family: str) -> dict[str, Any]:
    source = {"vllm": "org/m", "ollama": "m"}[family]
    return {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine", "metadata": {"name": name},
            "spec": {"engine": family, "gpus": 1, "model": {"source": source, "servedName": "m"}}}  # fmt: skip


@pytest.fixture
def stack(operator: Process, crds: Cluster, namespace: str, tmp_path: Path) -> Iterator[Process]:
    # A stream on the vLLM simulator lasts 40 x 100 ms.
    sims = {"vllm": processes.enginesim("vllm", "dv", ["m"], ARTIFACTS, tokens=40, itl_ms=100).start(),
            "ollama": processes.enginesim("ollama", "do", ["m"], ARTIFACTS).start()}  # fmt: skip
    mapping = ("--endpoint-map", f"d-vllm={sims['vllm'].url}",  # type: ignore[attr-defined]
               "--endpoint-map", f"d-ollama={sims['ollama'].url}")  # type: ignore[attr-defined]  # fmt: skip
    gw = processes.cluster_gateway(namespace, crds.kubeconfig, tmp_path, ARTIFACTS, [KEY], [ADMIN],
                                   extra=mapping).start()  # fmt: skip
    crds.apply([{"apiVersion": "roundhouse.dev/v1alpha1", "kind": "EngineMode", "metadata": {"name": "default"},
                 "spec": {"mode": "vllm", "switchPolicy": {"drainSeconds": DRAIN}}},
                gpu_engine("d-vllm", "vllm"), gpu_engine("d-ollama", "ollama")], namespace)  # fmt: skip
    wait_until(lambda: (crds.get("em", "default", namespace).get("status") or {}).get("phase") == "Ready"
               and (crds.get("ie", "d-vllm", namespace).get("status") or {}).get("phase") == "Ready", 90,
               "EngineMode and the vLLM engine Ready")  # fmt: skip
    wait_until(lambda: httpx.post(gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},  # type: ignore[attr-defined]
                                  json={"model": "m", "messages": [{"role": "user", "content": "x"}],
                                        "max_tokens": 1}).status_code == 200, 30, "the gateway to route")  # fmt: skip
    yield gw
    gw.stop()
    for s in sims.values():
        s.stop()


def switch(c: Cluster, namespace: str, target: str) -> None:
    c.kubectl("patch", "enginemode", "default", "--type", "merge", "-p", json.dumps({"spec": {"mode": target}}),
              namespace=namespace)  # fmt: skip


def done(c: Cluster, namespace: str, target: str) -> dict[str, Any] | None:
    st = c.get("em", "default", namespace).get("status") or {}
    return st if st.get("phase") == "Ready" and st.get("activeMode") == target else None


def test_the_drain_waits_for_requests_in_flight_and_ends_with_them(
    stack: Process, crds: Cluster, namespace: str
) -> None:
    url = stack.url  # type: ignore[attr-defined]
    answer: dict[str, Any] = {}

    def stream() -> None:
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60,
                          headers={"Authorization": f"Bearer {KEY}"}) as r:  # fmt: skip
            lines = [line for line in r.iter_lines() if line.startswith("data: ")]
        answer.update(status=r.status_code, lines=lines, ended=time.monotonic())

    t = threading.Thread(target=stream)
    t.start()
    time.sleep(0.5)  # the stream is running on d-vllm
    started = time.monotonic()
    switch(crds, namespace, "ollama")
    time.sleep(2)
    # Still draining: the stream is in flight, so the vLLM pod stays and the mode says Switching.
    assert (crds.get("em", "default", namespace).get("status") or {}).get("phase") == "Switching"
    assert crds.list("pods", namespace, "roundhouse.dev/family=vllm")
    t.join(30)
    assert answer["status"] == 200 and answer["lines"][-1] == "data: [DONE]" and len(answer["lines"]) > 40
    st = wait_until(lambda: done(crds, namespace, "ollama"), 30, "the switch to end after the stream")
    # It ended with the stream, not at the 30 s deadline.
    assert time.monotonic() - started < DRAIN
    assert answer["ended"] - started - 1 <= st["lastSwitchSeconds"] < DRAIN


def test_an_idle_switch_does_not_wait_for_its_drain_deadline(stack: Process, crds: Cluster, namespace: str) -> None:
    started = time.monotonic()
    switch(crds, namespace, "ollama")
    st = wait_until(lambda: done(crds, namespace, "ollama"), DRAIN, "the idle switch to end")
    assert st["lastSwitchSeconds"] < DRAIN / 2 and time.monotonic() - started < DRAIN / 2
    stopped = [e["message"] for e in crds.list("events", namespace) if e["reason"] == "SwitchCompleted"]
    assert stopped, "no SwitchCompleted event"

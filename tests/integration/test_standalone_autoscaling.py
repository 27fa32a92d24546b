"""Standalone spec.autoscaling: the gateway starts a second process of an engine when its load asks and
the budget allows, routes to both, and stops the second one after scaleDownSeconds of less load.

The engine's command line (spec.process) runs the engine simulator as llama-server (slow streams),
so a burst of concurrent requests is load that lasts."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support import processes
from tests.support.cluster import wait_until

pytestmark = pytest.mark.integration
KEY, ADMIN = "sk-elastic", "admin-elastic"
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts" / "standalone-autoscaling"


def docs() -> list[dict[str, Any]]:
    sim = [sys.executable, "-m", "tests.support.enginesim", "--flavour", "llamacpp", "--host", "127.0.0.1",
           "--port", "{port}", "--model", "elastic", "--itl-ms", "100", "--tokens", "30"]  # fmt: skip
    mode = {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "EngineMode", "metadata": {"name": "box"},
            "spec": {"mode": "onDemand", "onDemand": {"gpuBudget": 2, "minActiveSeconds": 0, "drainSeconds": 5,
                                                      "maxWaitSeconds": 60}}}  # fmt: skip
    engine = {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine", "metadata": {"name": "elastic"},
              "spec": {"engine": "llamacpp", "gpus": 1, "model": {"source": "/models/elastic.gguf",
                                                                  "servedName": "elastic"},
                       "process": {"command": sim, "env": {"PYTHONPATH": str(REPO)}},
                       "autoscaling": {"minReplicas": 0, "maxReplicas": 4, "targetRequestsPerReplica": 2,
                                       "scaleUpSeconds": 0, "scaleDownSeconds": 3}}}  # fmt: skip
    return [mode, engine]


def lines(log: Path, since: int, message: str) -> list[dict[str, Any]]:
    out = []
    for raw in log.read_bytes()[since:].decode(errors="replace").splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if entry.get("msg") == message:
            out.append(entry)
    return out


def test_a_burst_starts_a_second_process_within_the_budget_and_it_stops_after_the_window(tmp_path: Path) -> None:
    config = tmp_path / "elastic.yaml"
    config.write_text(yaml.safe_dump_all(docs()))
    extra = ("--engine-log-dir", str(tmp_path / "logs"), "--engine-cache-dir", str(tmp_path / "cache"))
    gw = processes.gateway(config, ARTIFACTS, [KEY], [ADMIN], extra=extra).start()
    since = gw.log_path.stat().st_size
    clients: list[threading.Thread] = []
    stop = threading.Event()
    try:
        url = gw.url  # type: ignore[attr-defined]
        answers: list[int] = []

        def ask() -> None:
            body = {"model": "elastic", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            r = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, json=body,
                           timeout=90)  # fmt: skip
            answers.append(r.status_code)

        def burst(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end and not stop.is_set():
                ask()

        # Six clients asking again and again, each stream taking about 3 s: 6 for a target of 2 a process.
        clients += [threading.Thread(target=burst, args=(12,)) for _ in range(6)]
        for t in clients:
            t.start()
        ready = wait_until(lambda: lines(gw.log_path, since, "extra process ready"), 40, "a second process ready")
        port = ready[0]["port"]
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
        time.sleep(2)
        started = lines(gw.log_path, since, "extra process ready")
        assert len(started) == 1, started  # it wants 3; the budget of 2 allows one more
        budget = httpx.get(f"{url}/admin/budget", headers={"Authorization": f"Bearer {ADMIN}"}).json()
        assert sum(h["gpusHeld"] for h in budget["engines"]) == 2, budget
        for t in clients:
            t.join(60)
        assert answers and set(answers) == {200}, answers

        quiet = time.monotonic()
        wait_until(lambda: lines(gw.log_path, since, "extra process stopped"), 30, "the second process stopped")
        assert time.monotonic() - quiet >= 3  # not before scaleDownSeconds
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
    finally:
        stop.set()
        for t in clients:
            t.join(30)
        gw.stop()

"""A gateway told to stop (SIGTERM) drains: /readyz says 503 at once, new connections are still
served for --drain-delay seconds, then refused; a request in flight finishes; a stream still running
at --drain-deadline ends with an OpenAI error event and [DONE], not a dropped connection."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import processes
from tests.support.processes import Process

pytestmark = pytest.mark.integration
KEY = "sk-drain"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "gateway-drain"


@pytest.fixture
def sims() -> Iterator[dict[str, Process]]:
    procs = {
        "quick": processes.enginesim("vllm", "quick", ["quick"], ARTIFACTS, ttft_ms=800).start(),
        "long": processes.enginesim("vllm", "long", ["long"], ARTIFACTS, itl_ms=100, tokens=200).start(),
    }
    yield procs
    for p in procs.values():
        p.stop()


@pytest.fixture
def gateway(sims: dict[str, Process], tmp_path: Path) -> Iterator[Process]:
    docs = [{"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine", "metadata": {"name": name},
             "spec": {"engine": "vllm", "model": {"source": "org/m", "servedName": name},
                      "endpoints": [sim.url]}} for name, sim in sims.items()]  # type: ignore[attr-defined]  # fmt: skip
    config = tmp_path / "drain.yaml"
    config.write_text("\n---\n".join(json.dumps(d) for d in docs))
    proc = processes.gateway(config, ARTIFACTS, [KEY], [], extra=("--drain-delay", "2", "--drain-deadline", "5"))
    proc.start()
    yield proc
    proc.stop()


def chat(url: str, model: str, stream: bool = False) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=30,
        json={"model": model, "messages": [{"role": "user", "content": "x"}], "stream": stream},
    )


def test_sigterm_drains_then_stops(gateway: Process) -> None:
    url = gateway.url  # type: ignore[attr-defined]
    results: dict[str, Any] = {}

    def run(name: str, model: str, stream: bool) -> None:
        r = chat(url, model, stream)
        results[name] = (r.status_code, r.text, time.monotonic())

    long = threading.Thread(target=run, args=("stream", "long", True))  # 20 s of tokens: past the deadline
    long.start()
    time.sleep(0.5)
    inflight = threading.Thread(target=run, args=("inflight", "quick", False))  # 0.8 s: finishes in the drain
    inflight.start()
    time.sleep(0.2)
    assert gateway.proc is not None
    gateway.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    time.sleep(0.2)
    ready = httpx.get(f"{url}/readyz")
    assert ready.status_code == 503 and ready.json() == {"ready": False, "draining": True}
    late = chat(url, "quick")  # a new connection inside the delay is still served, and told to go away
    assert late.status_code == 200 and late.headers.get("connection") == "close", late.text
    assert time.monotonic() - signalled < 2
    while time.monotonic() - signalled < 2.6:
        time.sleep(0.1)
    with pytest.raises(httpx.ConnectError):
        chat(url, "quick")  # after the delay: no more connections
    inflight.join(10)
    long.join(15)
    status, body, _ = results["inflight"]
    assert status == 200 and json.loads(body)["choices"], body
    status, body, ended = results["stream"]
    assert status == 200 and '"code": "shutting_down"' in body and body.rstrip().endswith("data: [DONE]"), body[-400:]
    assert 4.5 <= ended - signalled <= 7, ended - signalled  # at the deadline, not before, not much after
    assert body.count("data: {") > 10  # the tokens before the deadline reached the client
    gateway.proc.wait(10)
    assert "Traceback" not in gateway.log_path.read_text()

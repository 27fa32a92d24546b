"""A partition between the gateway and one engine replica (its packets silently dropped, the way a
dead link or a firewall drops them, on a network namespace this test made): requests fail over to
the other replica with no client-visible error, and the gateway marks the replica unhealthy."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import processes
from tests.support.cluster import wait_until
from tests.support.netns import TestHost
from tests.support.processes import Process

pytestmark = pytest.mark.integration
KEY, ADMIN = "sk-partition", "admin-partition"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "partition"


@pytest.fixture
def replicas() -> Iterator[list[tuple[TestHost, Process]]]:
    out = []
    try:
        for i in (3, 4):
            host = TestHost.create(i)
            sim = processes.enginesim("vllm", f"r{i}", ["m"], ARTIFACTS, host.address, 8000, tuple(host.run([])))
            out.append((host, sim.start()))
        yield out
    finally:
        for host, sim in out:
            sim.stop()
            host.delete()


def drop(address: str, on: bool) -> None:
    """Drop every packet this machine sends to `address` (no reset, no ICMP: a silent partition)."""
    subprocess.run(["iptables", "-I" if on else "-D", "OUTPUT", "-d", address, "-j", "DROP"], check=True)


def test_a_silent_partition_from_one_replica_costs_no_request(replicas: list[tuple[TestHost, Process]],
                                                              tmp_path: Path) -> None:  # fmt: skip
    urls = [f"http://{h.address}:8000" for h, _ in replicas]
    engine = {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine", "metadata": {"name": "pool"},
              "spec": {"engine": "vllm", "model": {"source": "org/m", "servedName": "m"}, "endpoints": urls,
                       "routing": {"timeouts": {"connectSeconds": 1, "firstByteSeconds": 3}}}}  # fmt: skip
    config = tmp_path / "partition.yaml"
    config.write_text(json.dumps(engine))
    gw = processes.gateway(config, ARTIFACTS, [KEY], [ADMIN], probe_interval=0.5).start()
    url, cut = gw.url, replicas[0][0].address  # type: ignore[attr-defined]
    ok, failed, slowest, stop = [0], [], [0.0], threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {KEY}"}) as http:
            while not stop.is_set():
                start = time.monotonic()
                try:
                    r = http.post(f"{url}/v1/chat/completions", json={"model": "m", "messages": [
                        {"role": "user", "content": "x"}]})  # fmt: skip
                    (ok.__setitem__(0, ok[0] + 1) if r.status_code == 200 else failed.append(r.status_code))
                except httpx.HTTPError as err:
                    failed.append(repr(err))
                slowest[0] = max(slowest[0], time.monotonic() - start)
                time.sleep(0.01)

    def health() -> dict[str, str]:
        engines = httpx.get(f"{url}/admin/engines", headers={"Authorization": f"Bearer {ADMIN}"}).json()["engines"]
        return {e["url"]: e["health"] for e in engines[0]["endpoints"]}

    clients = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    try:
        for t in clients:
            t.start()
        time.sleep(2)
        drop(cut, True)
        cut_at = time.monotonic()
        wait_until(lambda: health()[f"http://{cut}:8000"] != "ok", 15, "the cut replica marked unhealthy", 0.05)
        marked = time.monotonic() - cut_at
        time.sleep(5)  # traffic on the healthy replica only
        during = ok[0]
        drop(cut, False)
        wait_until(lambda: health()[f"http://{cut}:8000"] == "ok", 15, "the replica healthy again after the heal")
    finally:
        stop.set()
        for t in clients:
            t.join(35)
        gw.stop()
        with contextlib.suppress(subprocess.CalledProcessError):  # removed already, unless a step failed
            drop(cut, False)
    assert not failed, failed[:5]
    assert marked < 5, marked
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "partition.txt").write_text(f"requests {ok[0]} (to the heal: {during}) failed 0; marked unhealthy "
                                             f"after {marked:.2f}s; slowest request {slowest[0]:.2f}s\n")  # fmt: skip

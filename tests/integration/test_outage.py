"""The API server and etcd stopped for 60 s under load: the cluster gateway keeps routing by its last
view (no failed request; /readyz ready; /admin says the view is stale, since when) and resyncs within
5 s of their return; the operator survives, and a mode switch begun before the outage finishes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_operator import setup_two_families, wait_phase
from tests.support import processes
from tests.support.cluster import Cluster, start_control_plane, stop_control_plane, wait_until
from tests.support.processes import Process

pytestmark = pytest.mark.integration
KEY, ADMIN = "sk-outage", "admin-outage"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "outage"
OUTAGE_SECONDS = 60


def ie(name: str, model: str, url: str) -> dict[str, Any]:
    return {
        "apiVersion": "roundhouse.dev/v1alpha1",
        "kind": "InferenceEngine",
        "metadata": {"name": name},
        "spec": {"engine": "vllm", "model": {"source": "org/m", "servedName": model}, "endpoints": [url]},
    }


@pytest.fixture
def sim() -> Iterator[Process]:
    proc = processes.enginesim("vllm", "s", ["m", "n"], ARTIFACTS).start()
    yield proc
    proc.stop()


def test_an_api_server_and_etcd_outage_costs_no_request(operator: Process, crds: Cluster, namespace: str,
                                                        sim: Process, tmp_path: Path) -> None:  # fmt: skip
    c = crds
    c.apply(ie("served", "m", sim.url), namespace)  # type: ignore[attr-defined]
    gw = processes.cluster_gateway(namespace, c.kubeconfig, tmp_path, ARTIFACTS, [KEY], [ADMIN]).start()
    switching = c.create_namespace()  # the operator's side: a switch under way when the outage begins
    setup_two_families(c, switching, drain=8)
    url = gw.url  # type: ignore[attr-defined]
    admin = {"Authorization": f"Bearer {ADMIN}"}

    def answered(model: str) -> bool:
        try:
            return (
                httpx.post(
                    f"{url}/v1/chat/completions",
                    headers={"Authorization": f"Bearer {KEY}"},
                    timeout=10,
                    json={"model": model, "messages": [{"role": "user", "content": "x"}]},
                ).status_code
                == 200
            )
        except httpx.HTTPError:
            return False

    wait_until(lambda: answered("m"), 30, "the gateway routing")
    ok, failed, stop = [0], [0], threading.Event()

    def load() -> None:
        while not stop.is_set():
            (ok if answered("m") else failed)[0] += 1
            time.sleep(0.02)

    clients = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    for t in clients:
        t.start()
    try:
        c.kubectl("patch", "enginemode", "default", "--type", "merge", "-p", '{"spec":{"mode":"ollama"}}',
                  namespace=switching)  # fmt: skip
        wait_phase(c, "em", "default", switching, "Switching", 10)
        saved = stop_control_plane(c)
        stopped = time.monotonic()
        time.sleep(5)
        view = httpx.get(f"{url}/admin/engines", headers=admin).json()["view"]
        assert view["stale"] is True and view["staleSince"], view
        assert httpx.get(f"{url}/readyz").status_code == 200  # the last view still serves
        while time.monotonic() - stopped < OUTAGE_SECONDS:
            time.sleep(1)
        start_control_plane(c, saved)
        # The API server answers /readyz before it serves custom resources again (their storage
        # re-initialises, for seconds on a busy machine): the gateway's resync counts from then.
        wait_until(lambda: c.kubectl("get", "inferenceengines", namespace=namespace, check=False).returncode == 0,
                   30, "the API server serving InferenceEngines again", interval=0.05)  # fmt: skip
        back = time.monotonic()
        wait_until(lambda: not httpx.get(f"{url}/admin/engines", headers=admin).json()["view"]["stale"], 10,
                   "the gateway's view current again", interval=0.05)  # fmt: skip
        resync = time.monotonic() - back
        c.apply(ie("added", "n", sim.url), namespace)  # type: ignore[attr-defined]
        t0 = time.monotonic()
        wait_until(lambda: answered("n"), 10, "a change after the outage reaching routing", interval=0.05)
        change = time.monotonic() - t0
        # The switch's drain deadline passed during the outage: the operator's first pass once the API
        # server is back scales the outgoing engines to zero.
        wait_until(lambda: all(c.get("deployment", n, switching)["spec"]["replicas"] == 0 for n in ("v1", "v2")),
                   30, "the outgoing Deployments scaled to zero after the outage")  # fmt: skip
        # The rest is the cluster's: the controller-manager's informers come back with client-go's
        # backoff (up to 60 s with jitter after a 60 s outage), then the pods' 30 s grace period.
        done = wait_phase(c, "em", "default", switching, "Ready", 150)  # the operator finished the switch
        # And it still hears of what is new: an engine in a namespace created after the outage.
        fresh = c.create_namespace()
        c.apply(ie("after", "m2", sim.url), fresh)  # type: ignore[attr-defined]
        wait_until(lambda: (c.get("ie", "after", fresh).get("status") or {}).get("phase") == "Ready", 30,
                   "an engine created after the outage reconciled")  # fmt: skip
        c.delete_namespace(fresh)
    finally:
        stop.set()
        for t in clients:
            t.join(15)
        gw.stop()
        c.delete_namespace(switching)
    assert operator.alive(), "the operator died in the outage"
    assert done["activeMode"] == "ollama"
    assert failed[0] == 0 and ok[0] > 200, (ok, failed)
    assert resync <= 5, resync
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "outage.txt").write_text(f"requests {ok[0]} failed {failed[0]} resync {resync:.2f}s "
                                          f"change-to-routing {change:.2f}s\n")  # fmt: skip

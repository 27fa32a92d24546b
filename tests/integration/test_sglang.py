"""An SGLang engine (the simulator's SGLang flavour behind spec.endpoints) through the real control
plane, the operator and the cluster gateway: Ready from its /ready, its API key Secret sent upstream,
and `sglang` as a mode value that switches the other families off."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import processes
from tests.support.cluster import Cluster, wait_until
from tests.support.processes import Process

pytestmark = pytest.mark.integration
KEY, ADMIN, ENGINE_KEY = "sk-sglang-test", "admin-sglang-test", "sk-engine-only"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "sglang"


@pytest.fixture
def sims() -> Iterator[dict[str, Process]]:
    procs = {
        "s": processes.enginesim("sglang", "s", ["m"], ARTIFACTS, api_key=ENGINE_KEY).start(),
        "v": processes.enginesim("vllm", "v", ["m"], ARTIFACTS).start(),
    }
    yield procs
    for p in procs.values():
        p.stop()


def ie(name: str, family: str, url: str, **section: Any) -> dict[str, Any]:
    spec = {"engine": family, "model": {"source": "org/m", "servedName": "m"}, "endpoints": [url], **section}
    return {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine", "metadata": {"name": name},
            "spec": spec}  # fmt: skip


def served_by(url: str) -> str | None:
    try:
        r = httpx.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=5,
                       json={"model": "m", "messages": [{"role": "user", "content": "x"}]})  # fmt: skip
    except httpx.HTTPError:
        return None
    return r.headers.get("x-roundhouse-engine") if r.status_code == 200 else None


def test_an_sglang_engine_is_served_with_its_key_and_switched_as_a_mode(
    operator: Process, crds: Cluster, namespace: str, sims: dict[str, Process], tmp_path: Path
) -> None:
    c = crds
    c.kubectl("create", "secret", "generic", "sglang-key", f"--from-literal=apiKey={ENGINE_KEY}", namespace=namespace)
    c.apply({"apiVersion": "roundhouse.dev/v1alpha1", "kind": "EngineMode", "metadata": {"name": "default"},
             "spec": {"mode": "sglang"}}, namespace)  # fmt: skip
    c.apply(ie("fast", "sglang", sims["s"].url, sglang={"apiKeySecretRef": {"name": "sglang-key", "key": "apiKey"}}),  # type: ignore[attr-defined]
            namespace)  # fmt: skip
    c.apply(ie("steady", "vllm", sims["v"].url), namespace)  # type: ignore[attr-defined]

    def phases() -> dict[str, str | None]:
        return {n: (c.get("ie", n, namespace).get("status") or {}).get("phase") for n in ("fast", "steady")}

    wait_until(lambda: phases() == {"fast": "Ready", "steady": "Standby"}, 30, "fast Ready and steady Standby")
    gw = processes.cluster_gateway(namespace, c.kubeconfig, tmp_path, ARTIFACTS, [KEY], [ADMIN]).start()
    try:
        url = gw.url  # type: ignore[attr-defined]
        wait_until(lambda: served_by(url) == "fast", 30, "the SGLang engine serving")
        # The engine itself refuses requests without its own key: the gateway sent the Secret's.
        direct = httpx.post(sims["s"].url + "/v1/chat/completions",  # type: ignore[attr-defined]
                            json={"model": "m", "messages": [{"role": "user", "content": "x"}]})  # fmt: skip
        assert direct.status_code == 401
        view = httpx.get(url + "/admin/engine-mode", headers={"Authorization": f"Bearer {ADMIN}"}).json()
        assert view["mode"] == "sglang" and view["families"]["sglang"]["engines"] == ["fast"], view

        c.kubectl("patch", "enginemode", "default", "--type", "merge", "-p", json.dumps({"spec": {"mode": "vllm"}}),
                  namespace=namespace)  # fmt: skip
        wait_until(lambda: served_by(url) == "steady", 30, "routing to vLLM after the switch")
        wait_until(lambda: phases() == {"fast": "Standby", "steady": "Ready"}, 30, "fast Standby and steady Ready")
    finally:
        gw.stop()


def test_an_sglang_engine_is_started_on_demand_and_swapped_out_within_the_budget(
    operator: Process, crds: Cluster, namespace: str, tmp_path: Path
) -> None:
    """Mode onDemand with an SGLang engine and a vLLM one that cannot both hold the 8-GPU budget: a
    request for each starts it, the other giving its GPUs back first."""
    from tests.integration.test_on_demand import chat as od_chat
    from tests.integration.test_on_demand import mode, phase, pods_of
    from tests.integration.test_operator import small

    c = crds
    sims = {"gamma": processes.enginesim("sglang", "gamma", ["gamma"], ARTIFACTS).start(),
            "alpha": processes.enginesim("vllm", "alpha", ["alpha"], ARTIFACTS).start()}  # fmt: skip
    extra = tuple(a for name, sim in sims.items() for a in ("--endpoint-map", f"{name}={sim.url}"))  # type: ignore[attr-defined]
    gw = processes.cluster_gateway(namespace, c.kubeconfig, tmp_path, ARTIFACTS, ["sk-on-demand"], [], extra=extra,
                                   probe_interval=0.2).start()  # fmt: skip
    try:
        mode(namespace, c, drainSeconds=1)
        c.apply([small("gamma", "sglang", gpus=8, sglang={"tensorParallelSize": 4, "dataParallelSize": 2}),
                 small("alpha", "vllm", gpus=8, vllm={"tensorParallelSize": 8})], namespace)  # fmt: skip
        wait_until(lambda: {phase(c, n, namespace) for n in ("gamma", "alpha")} == {"Standby"}, 20, "both on standby")
        url = gw.url  # type: ignore[attr-defined]
        first = od_chat(url, "gamma")
        assert first.status_code == 200 and first.headers["x-roundhouse-engine"] == "gamma", first.text
        assert "activated:gamma:" in first.headers["x-roundhouse-route-reason"]
        assert pods_of(c, namespace) == {"gamma": 1}
        second = od_chat(url, "alpha")
        assert second.status_code == 200 and second.headers["x-roundhouse-engine"] == "alpha", second.text
        wait_until(lambda: pods_of(c, namespace) == {"alpha": 1}, 30, "gamma's pod gone, alpha's running")
        assert phase(c, "gamma", namespace) == "Standby"
    finally:
        gw.stop()
        for p in sims.values():
            p.stop()

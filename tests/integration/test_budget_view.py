"""The admin API's /admin/budget in a cluster: against the real API server, the operator and the
cluster gateway, it reports the same holders, budget and swaps as the EngineMode's status and events.

Pods run on the simulated GPU nodes; each engine's traffic goes to an engine simulator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_on_demand import ARTIFACTS, KEY, chat, engines, mode, phase, sims
from tests.support import processes
from tests.support.cluster import Cluster, wait_until
from tests.support.processes import Process

pytestmark = pytest.mark.integration
__all__ = ["sims"]  # the fixture, imported for this module's test
ADMIN = "admin-budget"
STATES = {"active": "running"}  # the operator's word -> the Budget view's; the others are the same


@pytest.fixture
def gateway(crds: Cluster, namespace: str, sims: dict[str, Process], tmp_path: Path) -> Iterator[Process]:
    extra = tuple(a for name, sim in sims.items() for a in ("--endpoint-map", f"{name}={sim.url}"))  # type: ignore[attr-defined]
    proc = processes.cluster_gateway(namespace, crds.kubeconfig, tmp_path, ARTIFACTS, [KEY], [ADMIN], extra=extra,
                                     probe_interval=0.2).start()  # fmt: skip
    yield proc
    proc.stop()


def budget(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/admin/budget", headers={"Authorization": f"Bearer {ADMIN}"}).json()  # type: ignore[no-any-return]


def test_the_budget_endpoint_reports_what_the_engine_mode_says(
    operator: Process, crds: Cluster, namespace: str, gateway: Process
) -> None:
    c, url = crds, gateway.url  # type: ignore[attr-defined]
    mode(namespace, c, drainSeconds=2)
    engines(namespace, c)  # alpha and beta, 8 GPUs each, within a budget of 8: one at a time
    wait_until(lambda: phase(c, "alpha", namespace) == "Standby" and phase(c, "beta", namespace) == "Standby", 20,
               "both engines on standby")  # fmt: skip
    assert chat(url, "alpha").status_code == 200
    assert chat(url, "beta").status_code == 200  # a swap: alpha drains and stops first

    def agreed() -> tuple[dict[str, Any], dict[str, Any]] | None:
        st = c.get("em", "default", namespace).get("status") or {}
        b = budget(url)
        calm = {e.get("state") for e in st.get("engines") or []} <= {"active", "standby"}
        return (st, b) if calm and b.get("gpusHeld") == st.get("gpusHeld") == 8 and len(b["swaps"]) >= 6 else None

    st, b = wait_until(agreed, 30, "the budget view and the EngineMode's status to agree after the swap")
    assert b["onDemand"] is True and b["gpuBudget"] == st["gpuBudget"] == 8
    assert b["settings"]["drainSeconds"] == 2 and b["settings"]["gpuBudget"] == 8
    view = {e["name"]: (e["state"], e["gpusHeld"], e["message"]) for e in b["engines"]}
    status = {e["name"]: (STATES.get(e["state"], e["state"]), 8 if e["state"] == "active" else 0, e["message"])
              for e in st["engines"]}  # fmt: skip
    assert view == status and view["beta"][:2] == ("running", 8), (view, status)

    # The swaps are the EngineMode's own events, newest first, each named by its engine.
    events = [e for e in c.list("events", namespace) if e["involvedObject"]["kind"] == "EngineMode"
              and e["reason"] in ("Activating", "Draining", "Stopped", "Activated", "Waiting")]  # fmt: skip
    assert {(e["reason"], e["message"]) for e in events} == {(s["reason"], s["message"]) for s in b["swaps"]}
    steps = [(s["reason"], s["engine"]) for s in reversed(b["swaps"])]
    assert steps.index(("Activating", "alpha")) < steps.index(("Draining", "alpha")) < steps.index(
        ("Stopped", "alpha")) < steps.index(("Activating", "beta")) < steps.index(("Activated", "beta"))  # fmt: skip
    assert [s["at"] for s in b["swaps"]] == sorted((s["at"] for s in b["swaps"]), reverse=True)  # ties: stored order
    activated = next(s for s in b["swaps"] if s["reason"] == "Activated" and s["engine"] == "beta")
    assert activated["seconds"] is not None and activated["message"].startswith("beta is ready")
    # The history: alpha held the 8 GPUs, then beta did.
    held = [p["held"] for p in b["history"]["points"]]
    assert {"alpha": 8} in held and held[-1] == {"beta": 8}
    assert held.index({"alpha": 8}) < len(held) - 1

    # Out of onDemand from the admin API: no budget is in force, and the settings come back with it.
    admin = {"Authorization": f"Bearer {ADMIN}"}
    r = httpx.put(f"{url}/admin/engine-mode", headers=admin, json={"mode": "llamacpp"})
    assert r.status_code == 200, r.text
    wait_until(lambda: not budget(url)["onDemand"] and phase(c, "beta", namespace) == "Ready", 30,
               "no budget in force, beta running in mode llamacpp")  # fmt: skip
    assert "onDemand" not in c.get("em", "default", namespace)["spec"]
    r = httpx.put(f"{url}/admin/engine-mode", headers=admin, json={"mode": "onDemand"})
    assert r.status_code == 200, r.text
    assert c.get("em", "default", namespace)["spec"]["onDemand"]["drainSeconds"] == 2
    back = wait_until(lambda: (b := budget(url))["onDemand"] and b, 30, "the budget in force again")
    assert back["settings"]["drainSeconds"] == 2 and back["gpuBudget"] == 8

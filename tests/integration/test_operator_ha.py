"""Two operator replicas with leader election on a Lease: only the leader writes, and when it is
SIGKILLed in the middle of a mode switch the standby takes the lease and finishes the switch."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.test_operator import (
    assert_outgoing_gone_before_incoming,
    pod_watch,
    setup_two_families,
    wait_phase,
)
from tests.support import processes
from tests.support.cluster import Cluster, wait_until
from tests.support.processes import Process

pytestmark = pytest.mark.integration
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "operator-ha"


@pytest.fixture
def ha_namespace(crds: Cluster) -> Iterator[str]:
    name = crds.create_namespace("ha")  # the session's own operator leaves ha-* alone
    yield name
    crds.delete_namespace(name)


@pytest.fixture
def replicas(crds: Cluster, ha_namespace: str) -> Iterator[list[Process]]:
    extra = ("--leader-election", "--leader-election-namespace", ha_namespace)
    procs = [processes.operator(crds.env, ARTIFACTS, [ha_namespace], extra, name=f"operator-{i}").start()
             for i in range(2)]  # fmt: skip
    yield procs
    for p in procs:
        p.stop()


def metric(proc: Process, name: str) -> float:
    try:
        text = httpx.get(proc.metrics_url, timeout=2).text  # type: ignore[attr-defined]
    except httpx.HTTPError:
        return -1
    return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(name) and not ln.startswith("#"))


def leader(procs: list[Process]) -> Process | None:
    leading = [p for p in procs if p.alive() and metric(p, "roundhouse_operator_leader ") == 1]
    return leading[0] if len(leading) == 1 else None


def test_only_the_leader_writes_and_the_standby_takes_over_mid_switch(
    crds: Cluster, ha_namespace: str, replicas: list[Process]
) -> None:
    c, ns = crds, ha_namespace
    first = wait_until(lambda: leader(replicas), 20, "exactly one leader")
    standby = next(p for p in replicas if p is not first)
    lease = c.get("lease", "roundhouse-operator", ns)
    assert lease["spec"]["holderIdentity"] and lease["spec"]["leaseDurationSeconds"] == 10
    setup_two_families(c, ns, drain=3)
    assert metric(first, "roundhouse_operator_applies_total") > 0
    assert metric(standby, "roundhouse_operator_applies_total") == 0  # the standby has written nothing
    assert metric(standby, "roundhouse_operator_reconciles_total") == 0
    with pod_watch(c, ns) as seen:
        c.kubectl("patch", "enginemode", "default", "--type", "merge", "-p", '{"spec":{"mode":"ollama"}}',
                  namespace=ns)  # fmt: skip
        wait_phase(c, "em", "default", ns, "Switching", 10)
        first.kill()  # SIGKILL: no chance to hand the lease over
        killed = time.monotonic()
        wait_until(lambda: metric(standby, "roundhouse_operator_leader ") == 1, 20, "the standby leading")
        takeover = time.monotonic() - killed
        done = wait_phase(c, "em", "default", ns, "Ready", 60)
        wait_until(lambda: len(c.list("pods", ns, "roundhouse.dev/family=ollama")) == 2, 30, "2 ollama pods")
    assert takeover <= 15, takeover
    assert done["activeMode"] == "ollama"
    assert c.list("pods", ns, "roundhouse.dev/family=vllm") == []
    assert_outgoing_gone_before_incoming(seen, "vllm", "ollama")
    assert c.get("lease", "roundhouse-operator", ns)["spec"]["leaseTransitions"] >= 1
    (ARTIFACTS / "takeover.txt").write_text(f"{takeover:.2f}\n")

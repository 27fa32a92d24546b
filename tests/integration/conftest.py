"""The integration tier runs against a real kube-apiserver, etcd, controller-manager, scheduler and kwok."""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator
from typing import Any

import pytest

from tests.support import cluster as lc
from tests.support import processes, tools
from tests.support.manifests import REPO
from tests.support.processes import Process

CONTROL_PLANE = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "etcd", "kwok")


@pytest.fixture(scope="session")
def cluster() -> Iterator[lc.Cluster]:
    """Bring the local control plane up (or reuse a running one). Never skips: a cluster that cannot
    start fails the run with the reason."""
    try:
        tools.require(*CONTROL_PLANE)
    except tools.ToolMissing as err:
        pytest.fail(str(err), pytrace=False)
    started_here = not lc.is_up()
    if started_here:
        try:
            lc.up()
        except lc.ClusterError as err:
            pytest.fail(str(err), pytrace=False)
    yield lc.Cluster()
    if started_here:
        lc.down()


@pytest.fixture(scope="session")
def crds(cluster: lc.Cluster) -> lc.Cluster:
    """The generated CRDs, installed and Established."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    return cluster


@pytest.fixture
def namespace(cluster: lc.Cluster) -> Iterator[str]:
    name = cluster.create_namespace()
    yield name
    cluster.delete_namespace(name)


@pytest.fixture
def unmanaged(cluster: lc.Cluster) -> Iterator[str]:
    """A namespace no operator of this session reconciles: the test writes what the operator would
    (an engine's EndpointSlice or status), and the session's operator, if another test started it, stays out."""
    name = cluster.create_namespace("no-operator")
    yield name
    cluster.delete_namespace(name)


ARTIFACTS = REPO / "artifacts"


@pytest.fixture(scope="session")
def operator(crds: lc.Cluster) -> Iterator[Process]:
    """roundhouse-operator as a real process watching every namespace of the local cluster."""
    # roundhouse-system belongs to the operator that test_install runs as its ServiceAccount.
    # ha-* namespaces belong to the operator replicas that test_operator_ha runs with leader election.
    # no-operator-* namespaces are for tests that play the operator's part themselves (unmanaged()).
    # One kopf pattern: separate list items would each match on their own ("*" alone matches all).
    proc = processes.operator(crds.env, ARTIFACTS, namespaces=["*, !roundhouse-system, !ha-*, !no-operator-*"])
    try:
        proc.start()
    except RuntimeError as err:
        pytest.fail(str(err), pytrace=False)
    yield proc
    proc.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """A failed test that ran with the session's operator shows the operator's last warnings and
    errors: CI keeps only what pytest prints, and the operator's log explains most such failures."""
    outcome = yield
    report = outcome.get_result()
    proc = getattr(item, "funcargs", {}).get("operator")
    if not isinstance(proc, Process) or not proc.log_path.exists():
        return
    if call.when == "setup":
        item.stash[LOG_START] = proc.log_path.stat().st_size
    elif report.failed:
        complaints = operator_complaints(proc, item.stash.get(LOG_START, 0))
        report.sections.append(("operator log during the test: last warnings and errors", complaints))


LOG_START = pytest.StashKey[int]()


def operator_complaints(proc: Process, start: int, limit: int = 30) -> str:
    """The operator's last `limit` warning and error lines after byte `start`, one short line each."""
    lines = []
    with proc.log_path.open("rb") as log:
        log.seek(start)
        text = log.read().decode(errors="replace")
    for raw in text.splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if entry.get("severity") in ("warning", "error", "critical") and "Retrying" not in entry.get("message", ""):
            extra = {k: v for k, v in entry.items() if k not in ("message", "severity", "exc_info")}
            lines.append(f"{entry.get('message')} {json.dumps(extra)}"[:300])
    return "\n".join(lines[-limit:]) or "(none)"

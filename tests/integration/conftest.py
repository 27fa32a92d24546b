"""The integration tier runs against a real kube-apiserver, etcd, controller-manager, scheduler and kwok."""

from __future__ import annotations

from collections.abc import Iterator

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
    (an engine's EndpointSlice), and the session's operator, if another test started it, stays out."""
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

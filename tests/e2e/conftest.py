"""The e2e tier: a local cluster with one real node (kubelet + containerd on this machine, images
built by hack/build-images.py), started for the session in its own state directory and stopped at
the end. `make test-e2e` sets ROUNDHOUSE_CLUSTER_DIR, ROUNDHOUSE_REAL_NODES=1 and no simulated nodes,
so every pod runs for real."""

from __future__ import annotations

import pytest

from tests.integration.conftest import cluster, crds, namespace  # noqa: F401 - the same fixtures, real node
from tests.support import tools

# What a real node and the chart's pods need beyond the control plane (make test-e2e depends on them).
NEEDS = ("helm", "llama-server", "ollama", "vllm-python", "sglang-python", *tools.REAL_NODE)


@pytest.fixture(scope="session", autouse=True)
def tools_installed() -> None:
    try:
        tools.require(*NEEDS)
    except tools.ToolMissing as err:
        pytest.fail(str(err), pytrace=False)

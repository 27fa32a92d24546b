"""Specs the CRD admits but whose rendered objects the real API server refuses: each engine says so
in its status (Applied=False, reason Refused<Kind>, the server's own message naming the field),
phase Failed, one Warning event per distinct message, and the operator logs one line, no traceback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_operator import small
from tests.support.cluster import Cluster, wait_until
from tests.support.processes import Process, enginesim

pytestmark = pytest.mark.integration

CASES: dict[str, tuple[dict[str, Any], str, str]] = {
    # name: (spec overrides, refused kind, text the API server's message must contain)
    "toleration-operator": ({"tolerations": [{"key": "k", "operator": "Sometimes", "effect": "NoSchedule"}]},
                            "Deployment", "tolerations[1].operator"),
    "memory-negative": ({"resources": {"limits": {"memory": "-1Gi"}}}, "Deployment", "memory"),
    "node-selector-key": ({"nodeSelector": {"not a key!": "x"}}, "Deployment", "nodeSelector"),
    "env-value-from-no-name": ({"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"key": "k"}}}]}, "Deployment",
                               "secretKeyRef.name"),
    "env-value-and-value-from": ({"env": [{"name": "X", "value": "a",
                                           "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]},
                                 "Deployment", "env[1].valueFrom"),
    "affinity-operator": ({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "k", "operator": "Maybe", "values": ["v"]}]}]}}}},
        "Deployment", "operator"),
}  # fmt: skip


def condition(st: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in st.get("conditions", []) if c["type"] == kind)


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_refused_object_is_reported_on_the_engine(case: str, operator: Process, cluster: Cluster,
                                                  namespace: str) -> None:  # fmt: skip
    overrides, kind, field = CASES[case]
    log_start = operator.log_path.stat().st_size
    cluster.apply(small(case, "vllm", **overrides), namespace)

    def failed() -> dict[str, Any] | None:
        st = cluster.get("ie", case, namespace).get("status") or {}
        return st if st.get("phase") == "Failed" else None

    st = wait_until(failed, 10, f"{case} Failed")
    applied = condition(st, "Applied")
    assert applied["status"] == "False" and applied["reason"] == f"Refused{kind}"
    assert field in applied["message"] and "invalid" in applied["message"].lower(), applied["message"]
    assert field in st["message"]
    events = wait_until(lambda: [e for e in cluster.list("events", namespace) if e["reason"] == f"Refused{kind}"],
                        10, "the Warning event")  # fmt: skip
    assert len(events) == 1 and events[0]["type"] == "Warning" and field in events[0]["message"]
    log = operator.log_path.read_bytes()[log_start:].decode(errors="replace")
    assert "Traceback" not in log
    assert '"apply refused"' in log or "apply refused" in log


def test_a_quantity_that_is_not_one_is_named_in_config_valid(operator: Process, cluster: Cluster,
                                                             namespace: str) -> None:  # fmt: skip
    """The API server answers a bad quantity with a 500 that names no field; the operator names it."""
    cluster.apply(small("lots", "vllm", resources={"requests": {"cpu": "lots"}}), namespace)
    st = wait_until(lambda: (s := cluster.get("ie", "lots", namespace).get("status") or {}).get("phase") == "Failed"
                    and s, 10, "Failed")  # fmt: skip
    cond = condition(st, "ConfigValid")
    assert cond["status"] == "False" and "spec.resources.requests.cpu: 'lots' is not a Kubernetes quantity" in cond[
        "message"]  # fmt: skip


def test_fixing_the_spec_clears_the_refusal(operator: Process, cluster: Cluster, namespace: str) -> None:
    cluster.apply(small("fixme", "vllm", resources={"limits": {"memory": "-1Gi"}}), namespace)
    wait_until(lambda: (cluster.get("ie", "fixme", namespace).get("status") or {}).get("phase") == "Failed", 10,
               "refused")  # fmt: skip
    cluster.apply(small("fixme", "vllm", resources={"limits": {"memory": "1Gi"}}), namespace)
    st = wait_until(lambda: (s := cluster.get("ie", "fixme", namespace).get("status") or {}).get("phase") == "Ready"
                    and s, 60, "Ready after the fix")  # fmt: skip
    assert condition(st, "Applied")["status"] == "True"


def test_a_fallback_that_does_not_exist_is_named_until_it_appears(operator: Process, cluster: Cluster,
                                                                  namespace: str) -> None:  # fmt: skip
    cluster.apply(small("primary", "vllm", routing={"fallback": ["spare", "other"]}), namespace)

    def references() -> dict[str, Any] | None:
        st = cluster.get("ie", "primary", namespace).get("status") or {}
        return next((c for c in st.get("conditions", []) if c["type"] == "References"), None)

    cond = wait_until(lambda: (c := references()) and c["status"] == "False" and c, 10, "References=False")
    assert cond["reason"] == "MissingFallback" and cond["message"].endswith(": spare, other")
    events = [e for e in cluster.list("events", namespace) if e["reason"] == "MissingFallback"]
    assert len(events) == 1 and "spare, other" in events[0]["message"]
    cluster.apply(small("spare", "vllm"), namespace)
    wait_until(lambda: (c := references()) and c["message"].endswith(": other"), 10, "only other missing")
    cluster.apply(small("other", "vllm"), namespace)
    wait_until(lambda: (c := references()) and c["status"] == "True", 10, "References=True once both exist")


@pytest.fixture
def external_api(tmp_path: Path) -> Iterator[Process]:
    """An OpenAI-compatible API on loopback that wants one key."""
    sim = enginesim("openai", "ext", ["gpt-4o-mini"], tmp_path, api_key="sk-upstream")
    sim.start()
    yield sim
    sim.stop()


def test_a_missing_api_key_secret_is_named_until_it_appears(operator: Process, cluster: Cluster, namespace: str,
                                                            external_api: Process) -> None:  # fmt: skip
    """The operator probes an external API with the key from its Secret: while the Secret is missing the
    engine says which one (References=False, MissingSecret, one event, phase Failed); once it exists the
    probe authenticates and the engine turns Ready, with no edit to the engine."""
    base = f"{external_api.url}/v1"  # type: ignore[attr-defined]
    assert httpx.get(f"{base}/models").status_code == 401  # the key matters
    doc = {
        "apiVersion": "roundhouse.dev/v1alpha1",
        "kind": "InferenceEngine",
        "metadata": {"name": "ext-keyed"},
        "spec": {
            "engine": "external",
            "model": {"source": "gpt-4o-mini", "servedName": "gpt-4o-mini"},
            "external": {"baseURL": base, "apiKeySecretRef": {"name": "upstream-key", "key": "key"}},
        },
    }
    cluster.apply(doc, namespace)

    def status() -> dict[str, Any]:
        return cluster.get("ie", "ext-keyed", namespace).get("status") or {}

    st = wait_until(lambda: (s := status()).get("phase") == "Failed" and s, 10, "ext-keyed Failed")
    ref = condition(st, "References")
    want = f"spec.external.apiKeySecretRef: Secret upstream-key does not exist in namespace {namespace}"
    assert (ref["status"], ref["reason"], ref["message"]) == ("False", "MissingSecret", want)
    assert st["message"] == want
    events = wait_until(lambda: [e for e in cluster.list("events", namespace) if e["reason"] == "MissingSecret"], 10,
                        "the MissingSecret event")  # fmt: skip
    assert len(events) == 1 and "upstream-key" in events[0]["message"]
    cluster.kubectl("create", "secret", "generic", "upstream-key", "--from-literal=key=sk-wrong", namespace=namespace)
    # A key that exists but is refused upstream: the Secret is found, the probe says HTTP 401.
    st = wait_until(lambda: (s := status()) and "HTTP 401" in s.get("message", "") and s, 15, "probe answered 401")
    assert condition(st, "References")["status"] == "True" and st["phase"] == "Failed"
    cluster.kubectl("delete", "secret", "upstream-key", namespace=namespace)
    cluster.kubectl("create", "secret", "generic", "upstream-key", "--from-literal=key=sk-upstream",
                    namespace=namespace)  # fmt: skip
    st = wait_until(lambda: (s := status()).get("phase") == "Ready" and s, 30, "Ready with the right key")
    assert condition(st, "References")["status"] == "True"

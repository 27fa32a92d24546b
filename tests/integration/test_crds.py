"""The generated CRDs, as the real API server stores and enforces them."""

from __future__ import annotations

import json

import pytest

from tests.support.cluster import Cluster
from tests.support.manifests import EXAMPLES, INVALID, VALID_SPECS, Invalid

pytestmark = pytest.mark.integration


def test_crds_are_established_with_subresources(crds: Cluster) -> None:
    ie = crds.get("crd", "inferenceengines.roundhouse.dev")
    version = ie["spec"]["versions"][0]
    assert {c["type"]: c["status"] for c in ie["status"]["conditions"]}["Established"] == "True"
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    assert "status" in version["subresources"]
    assert ie["spec"]["names"]["shortNames"] == ["ie"]
    em = crds.get("crd", "enginemodes.roundhouse.dev")
    assert em["spec"]["names"]["shortNames"] == ["em"]
    assert em["spec"]["names"]["categories"] == ["roundhouse"]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_is_accepted_by_server_side_apply(crds: Cluster, namespace: str, path: object) -> None:
    out = crds.kubectl("apply", "--server-side", "-f", str(path), namespace=namespace)
    assert "serverside-applied" in out.stdout


@pytest.mark.parametrize("doc", VALID_SPECS.values(), ids=list(VALID_SPECS))
def test_valid_spec_is_accepted(crds: Cluster, namespace: str, doc: dict[str, object]) -> None:
    # The models accept these too (unit tier): the server and pydantic agree.
    crds.apply(doc, namespace)


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.id)
def test_invalid_manifest_is_refused_naming_the_field(crds: Cluster, namespace: str, case: Invalid) -> None:
    proc = crds.kubectl(
        "apply", "--server-side", "-f", "-", input=json.dumps(case.manifest()), namespace=namespace, check=False
    )
    assert proc.returncode != 0, f"{case.id} was accepted"
    assert case.field in proc.stderr, proc.stderr
    kind = "em" if case.manifest()["kind"] == "EngineMode" else "ie"
    assert crds.kubectl("get", kind, "-o", "name", namespace=namespace).stdout == ""


def test_get_ie_shows_printer_columns(crds: Cluster, unmanaged: str) -> None:
    # The test writes the status itself: in a namespace the session's operator (if running) leaves alone.
    namespace = unmanaged
    crds.kubectl("apply", "--server-side", "-f", str(EXAMPLES / "vllm-qwen2.5-7b.yaml"), namespace=namespace)
    status = {"status": {"phase": "Ready", "ready": "2/2", "active": True, "replicas": 2, "readyReplicas": 2,
                         "desiredReplicas": 2}}  # fmt: skip
    crds.kubectl(
        "patch", "ie", "qwen2-5-7b", "--subresource=status", "--type=merge", "-p", json.dumps(status),
        namespace=namespace,
    )  # fmt: skip
    lines = crds.kubectl("get", "ie", namespace=namespace).stdout.splitlines()
    assert lines[0].split() == ["NAME", "ENGINE", "MODEL", "READY", "DESIRED", "PHASE", "ACTIVE", "AGE"]
    assert lines[1].split()[:7] == ["qwen2-5-7b", "vllm", "qwen2.5-7b-instruct", "2/2", "2", "Ready", "true"]
    wide = crds.kubectl("get", "ie", "-o", "wide", namespace=namespace).stdout.splitlines()[0].split()
    assert "ENDPOINT" in wide
    crds.kubectl("apply", "--server-side", "-f", str(EXAMPLES / "enginemode.yaml"), namespace=namespace)
    em = crds.kubectl("get", "em", namespace=namespace).stdout.splitlines()
    assert em[0].split() == ["NAME", "MODE", "PHASE", "AGE"]
    assert em[1].split()[:2] == ["default", "vllm"]


def test_category_lists_both_kinds(crds: Cluster, namespace: str) -> None:
    for f in ("vllm-qwen2.5-7b.yaml", "enginemode.yaml"):
        crds.kubectl("apply", "--server-side", "-f", str(EXAMPLES / f), namespace=namespace)
    names = crds.kubectl("get", "roundhouse", "-o", "name", namespace=namespace).stdout.split()
    assert sorted(names) == ["enginemode.roundhouse.dev/default", "inferenceengine.roundhouse.dev/qwen2-5-7b"]


def test_kubectl_scale_changes_spec_replicas(crds: Cluster, namespace: str) -> None:
    crds.kubectl("apply", "--server-side", "-f", str(EXAMPLES / "vllm-qwen2.5-7b.yaml"), namespace=namespace)
    assert crds.get("ie", "qwen2-5-7b", namespace)["spec"]["replicas"] == 2
    crds.kubectl("scale", "ie", "qwen2-5-7b", "--replicas=5", namespace=namespace)
    assert crds.get("ie", "qwen2-5-7b", namespace)["spec"]["replicas"] == 5
    crds.kubectl("scale", "ie", "qwen2-5-7b", "--replicas=0", namespace=namespace)
    assert crds.get("ie", "qwen2-5-7b", namespace)["spec"]["replicas"] == 0


def test_server_applies_schema_defaults(crds: Cluster, namespace: str) -> None:
    crds.kubectl("apply", "--server-side", "-f", str(EXAMPLES / "vllm-llama-3.1-70b-tp2.yaml"), namespace=namespace)
    spec = crds.get("ie", "llama-3-1-70b", namespace)["spec"]
    assert spec["vllm"]["pipelineParallelSize"] == 1
    assert spec["vllm"]["shmSize"] == "20Gi"
    assert spec["routing"]["weight"] == 100

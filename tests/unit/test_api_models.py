"""The API models accept every example and refuse every invalid manifest, naming the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from roundhouse_api import CEL_CONTEXT_KEY, InferenceEngine, parse_resource
from tests.support.manifests import INVALID, VALID_SPECS, Invalid, engine, roundhouse_examples


@pytest.mark.parametrize("doc", roundhouse_examples(), ids=lambda d: d["metadata"]["name"])
def test_examples_are_valid(doc: dict[str, Any]) -> None:
    parsed = parse_resource(doc)
    assert parsed.metadata.name == doc["metadata"]["name"]


def test_examples_cover_every_family_and_a_mode() -> None:
    kinds = {(d["kind"], d["spec"].get("engine")) for d in roundhouse_examples()}
    for family in ("vllm", "llamacpp", "ollama", "external"):
        assert ("InferenceEngine", family) in kinds
    assert ("EngineMode", None) in kinds


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.id)
def test_invalid_manifest_is_refused_naming_the_field(case: Invalid) -> None:
    with pytest.raises(ValidationError) as err:
        parse_resource(case.manifest())
    assert case.field in str(err.value)


@pytest.mark.parametrize("doc", VALID_SPECS.values(), ids=list(VALID_SPECS))
def test_good_specs_are_accepted(doc: dict[str, Any]) -> None:
    InferenceEngine.model_validate(doc)


def test_wire_form_round_trips_and_omits_unset_fields() -> None:
    doc = engine(gpus=2, vllm={"tensorParallelSize": 2})
    spec = InferenceEngine.model_validate(doc).spec.wire()
    assert spec["vllm"]["tensorParallelSize"] == 2
    assert "gpuMemoryUtilization" not in spec["vllm"]
    assert "llamacpp" not in spec
    again = InferenceEngine.model_validate({**copy.deepcopy(doc), "spec": spec})
    assert again.spec.wire() == spec


def test_cel_rules_run_unless_the_caller_says_the_api_server_already_did() -> None:
    # What the operator reads back was admitted by the API server under the same rules (the CRD);
    # a gateway config file was checked by nobody, so plain model_validate keeps them.
    doc = {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine", "metadata": {"name": "e"},
           "spec": {"engine": "vllm", "model": {"source": "org/m", "servedName": "m"}, "ollama": {}}}  # fmt: skip
    with pytest.raises(ValidationError, match=r"spec\.ollama is allowed only when spec\.engine is 'ollama'"):
        InferenceEngine.model_validate(doc)
    assert InferenceEngine.model_validate(doc, context={CEL_CONTEXT_KEY: False}).spec.ollama is not None

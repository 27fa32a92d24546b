"""The API models accept every example and refuse every invalid manifest, naming the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from roundhouse_api import InferenceEngine, parse_resource
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

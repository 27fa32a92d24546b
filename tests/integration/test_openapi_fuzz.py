"""schemathesis against the gateway's own /openapi.json and the real gateway, with a simulator of each
family behind it: whatever the document allows (and what it does not), the gateway never answers 5xx.
Half the generated bodies name the served model, so they are routed and forwarded, not only checked."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance

from roundhouse_gateway.request import openapi
from tests.support import processes
from tests.support.cluster import wait_until
from tests.support.processes import Process

pytestmark = pytest.mark.integration
KEY = "sk-fuzz"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "openapi-fuzz"
EXAMPLES = 30  # per operation: bounded, so CI spends well under a minute here


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    sims = [processes.enginesim(f, f, ["m"], ARTIFACTS).start() for f in ("vllm", "llamacpp", "ollama")]
    docs = [{"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine", "metadata": {"name": f"e-{s.name}"},
             "spec": {"engine": f, "model": {"source": "org/m" if f != "ollama" else "m:latest", "servedName": "m"},
                      "endpoints": [s.url]}}  # type: ignore[attr-defined]
            for f, s in zip(("vllm", "llamacpp", "ollama"), sims, strict=True)]  # fmt: skip
    config = tmp_path_factory.mktemp("fuzz") / "fuzz.yaml"
    config.write_text(yaml.safe_dump_all(docs))
    gw = processes.gateway(config, ARTIFACTS, [KEY], []).start()
    wait_until(lambda: httpx.post(gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},  # type: ignore[attr-defined]
                                  json={"model": "m", "messages": [{"role": "user", "content": "x"}]}).status_code
               == 200, 30, "the gateway routing")  # fmt: skip
    yield gw
    gw.stop()
    for s in sims:
        s.stop()


# The document as the gateway serves it, built from the same code; the test below also fetches it.
SCHEMA = schemathesis.openapi.from_dict(openapi.document("test"))
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]


@pytest.mark.parametrize("operation", OPERATIONS, ids=[op.label for op in OPERATIONS])
def test_no_request_the_document_describes_gets_a_5xx(operation: Any, gateway: Process) -> None:
    url = gateway.url  # type: ignore[attr-defined]
    assert httpx.get(url + "/openapi.json").json()["paths"] == openapi.document("test")["paths"]
    checks = [not_a_server_error, status_code_conformance]

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy())
    def call(case: Any) -> None:
        if isinstance(case.body, dict) and "model" in case.body and zlib.crc32(repr(case.body).encode()) % 2:
            case.body["model"] = "m"  # routed to the simulators, not refused as an unknown model
        case.call_and_validate(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, checks=checks)

    call()

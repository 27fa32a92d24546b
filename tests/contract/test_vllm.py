"""Every rendered `vllm serve` command line, parsed by vLLM's own argument parser of the pinned version.

vLLM needs a GPU to serve, so the parser (and the start-up checks that run without one) is what runs
here: hack/build-vllm-parser.sh installs vLLM at the pinned version into a cached venv, and
tests/support/vllm_check.py feeds it every command line in one process.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from roundhouse_api.families import FAMILIES
from roundhouse_api.families.vllm import VERSION
from tests.contract.cases import Case, all_cases, engine, from_engine
from tests.contract.conftest import Record, need, run_checker

CASES = all_cases("vllm")
FAMILY = FAMILIES[CASES[0].engine.spec.engine]
CHECKER = Path(__file__).resolve().parents[1] / "support" / "vllm_check.py"


def check(argvs: list[list[str]]) -> list[dict[str, Any]]:
    """vLLM's parser on each command line (the args after `vllm serve`), in one process."""
    return run_checker("vllm-python", CHECKER, argvs)


@pytest.fixture(scope="module")
def parsed() -> dict[str, dict[str, Any]]:
    return dict(zip([c.id for c in CASES], check([c.container["args"] for c in CASES]), strict=True))


def test_the_parser_is_the_pinned_version() -> None:
    out = subprocess.run([str(need("vllm-python")), "-c", "import importlib.metadata as m; print(m.version('vllm'))"],
                         capture_output=True, text=True)  # fmt: skip
    assert out.stdout.strip() == VERSION, out.stderr
    assert FAMILY.image == f"vllm/vllm-openai:v{VERSION}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_vllm_accepts_the_rendered_command_line(case: Case, parsed: dict[str, dict[str, Any]],
                                                 record: Record) -> None:  # fmt: skip
    result = parsed[case.id]
    record.write("vllm", {"case": case.id, "args": case.container["args"], "accepted": result["ok"],
                          "error": result.get("error")})  # fmt: skip
    assert case.container["command"] == ["vllm", "serve"]
    assert result["ok"], f"vLLM {VERSION} refused {case.container['args']}: {result['error']}"
    values = result["parsed"]
    assert values["model"] == case.engine.spec.model.source
    assert values["served_model_name"] == FAMILY.listed_models(case.engine.spec)
    assert (values["host"], values["port"]) == ("0.0.0.0", FAMILY.port(case.engine.spec))


def test_the_parser_refuses_what_the_crd_refuses() -> None:
    """The checker is not a rubber stamp: values the CRD now refuses are refused by vLLM too."""
    ok = from_engine("ok", engine("ok", {"engine": "vllm", "model": {"source": "org/m", "servedName": "m"}}))
    bad = [
        [*ok.container["args"], "--quantization", "marlin"],
        [*ok.container["args"], "--no-enable-chunked-prefill", "--max-num-batched-tokens", "512",
         "--max-model-len", "4096"],
    ]  # fmt: skip
    results = check(bad)
    assert [r["ok"] for r in results] == [False, False], results

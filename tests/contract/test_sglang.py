"""Every rendered `sglang serve` command line, handled by SGLang's own code of the pinned version.

SGLang needs a GPU to serve, so what runs here is what `sglang serve` does before it loads the model:
hack/build-sglang-parser.sh installs SGLang at the pinned version into a cached venv, and
tests/support/sglang_check.py feeds it every command line in one process (its backend selection, then
`prepare_server_args`).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from roundhouse_api.families import FAMILIES
from roundhouse_api.families.sglang import VERSION
from tests.contract.cases import Case, all_cases, engine, from_engine
from tests.contract.conftest import Record, need, run_checker

CASES = all_cases("sglang")
FAMILY = FAMILIES[CASES[0].engine.spec.engine]
CHECKER = Path(__file__).resolve().parents[1] / "support" / "sglang_check.py"


def check(argvs: list[list[str]]) -> list[dict[str, Any]]:
    """SGLang's handling of each command line (the args after `sglang serve`), in one process."""
    return run_checker("sglang-python", CHECKER, argvs)


@pytest.fixture(scope="module")
def parsed() -> dict[str, dict[str, Any]]:
    return dict(zip([c.id for c in CASES], check([c.container["args"] for c in CASES]), strict=True))


def test_the_parser_is_the_pinned_version() -> None:
    code = "import importlib.metadata as m; print(m.version('sglang'))"
    out = subprocess.run([str(need("sglang-python")), "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == VERSION, out.stderr
    assert FAMILY.image == f"lmsysorg/sglang:v{VERSION}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_sglang_accepts_the_rendered_command_line(case: Case, parsed: dict[str, dict[str, Any]],
                                                   record: Record) -> None:  # fmt: skip
    result = parsed[case.id]
    record.write("sglang", {"case": case.id, "args": case.container["args"], "accepted": result["ok"],
                            "error": result.get("error")})  # fmt: skip
    assert case.container["command"] == ["sglang", "serve"]
    assert result["ok"], f"SGLang {VERSION} refused {case.container['args']}: {result['error']}"
    assert result["backend"] == "llm"
    values = result["parsed"]
    spec = case.engine.spec
    cfg = spec.sglang
    assert values["model_path"] == spec.model.source
    assert values["served_model_name"] == spec.model.served_name
    assert (values["host"], values["port"]) == ("0.0.0.0", FAMILY.port(spec))
    sizes = (values["tp_size"], values["dp_size"], values["pp_size"])
    assert sizes == (
        (cfg.tensor_parallel_size, cfg.data_parallel_size, cfg.pipeline_parallel_size) if cfg else (1, 1, 1)
    )
    assert values["enable_metrics"] is (cfg.metrics if cfg else True)
    if cfg and cfg.api_key_secret_ref:
        assert values["api_key"] == "$(SGLANG_API_KEY)"  # the kubelet puts the Secret's value there


def test_the_parser_refuses_what_the_crd_refuses() -> None:
    """The checker is not a rubber stamp: what the CRD refuses, SGLang refuses too."""
    ok = from_engine("ok", engine("ok", {"engine": "sglang", "model": {"source": "org/m", "servedName": "m"}}))
    bad = [
        [*ok.container["args"], "--quantization", "marlin"],
        [*ok.container["args"], "--kv-cache-dtype", "fp16"],
        [*ok.container["args"], "--no-such-flag"],
        ["--model-type", "tts", *ok.container["args"][2:]],
    ]
    results = check(bad)
    assert [r["ok"] for r in results] == [False] * len(bad), results
    assert "marlin" in results[0]["error"] and "fp16" in results[1]["error"], results

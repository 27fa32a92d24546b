"""LoRA adapters (spec.adapters) on the real engines of the pinned versions: every rendered adapter
command line judged by vLLM's and SGLang's own parsers, vLLM's run-time load/unload routes where its
env var turns them on, and the real llama-server loading a tiny LoRA GGUF the tests write, answering
differently at temperature 0 when a request applies it (the per-request field the gateway sends)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx

from roundhouse_api.families import FAMILIES, adapter_routes
from roundhouse_api.families.vllm import (
    LOAD_ADAPTER_PATH,
    RUNTIME_LORA_ENV,
    UNLOAD_ADAPTER_PATH,
    load_adapter_body,
    unload_adapter_body,
)
from tests.contract.cases import BASES, Case, engine, from_engine
from tests.contract.conftest import ARTIFACTS, need, run_checker
from tests.support import engines

SUPPORT = Path(__file__).resolve().parents[1] / "support"
TWO = [{"name": "sql", "source": "org/sql-lora"}, {"name": "chat", "source": "/models/loras/chat"}]


def case(case_id: str, family: str, **spec: Any) -> Case:
    return from_engine(case_id, engine(f"lora-{family}", {**BASES[family], **spec}))


VLLM_CASES = [
    case("vllm-runtime", "vllm", adapters=TWO),
    case("vllm-runtime-sized", "vllm", adapters=TWO, vllm={"maxLoras": 2, "maxLoraRank": 64}),
    case("vllm-sized-ahead", "vllm", vllm={"maxLoraRank": 320}),
    case("vllm-lora-modules", "vllm", adapters=TWO, vllm={"runtimeAdapterUpdates": False, "maxLoras": 2}),
]
SGLANG_CASES = [case("sglang-lora-paths", "sglang", adapters=TWO)]


def test_vllm_parses_every_adapter_command_line() -> None:
    results = run_checker("vllm-python", SUPPORT / "vllm_check.py", [c.container["args"] for c in VLLM_CASES])
    for c, result in zip(VLLM_CASES, results, strict=True):
        assert result["ok"], f"{c.id}: vLLM refused {c.container['args']}: {result['error']}"
        values, cfg = result["parsed"], c.engine.spec.vllm
        assert values["enable_lora"] is True, c.id
        if cfg and cfg.max_loras:
            assert values["max_loras"] == cfg.max_loras
        if cfg and cfg.max_lora_rank:
            assert values["max_lora_rank"] == cfg.max_lora_rank
        modules = values.get("lora_modules") or []
        if cfg and not cfg.runtime_adapter_updates:
            # vLLM's own LoRAModulePath for each adapter, name and path as the spec says.
            for a in c.engine.spec.adapters:
                assert any(f"name='{a.name}'" in m and f"path='{a.source}'" in m for m in modules), modules
        else:
            assert not modules, c.id


def test_vllm_refuses_a_rank_outside_its_choices() -> None:
    ok = VLLM_CASES[0].container["args"]
    (result,) = run_checker("vllm-python", SUPPORT / "vllm_check.py", [[*ok, "--max-lora-rank", "24"]])
    assert not result["ok"], result


def test_vllm_serves_the_operators_load_and_unload_calls_only_with_runtime_updating() -> None:
    """vLLM's own API server code: the routes it attaches with and without the env var the pod gets,
    and the operator's bodies as its request models read them."""
    env = {e["name"]: e.get("value") for e in VLLM_CASES[0].container["env"]}
    assert env[RUNTIME_LORA_ENV] == "1"
    bodies = {"load": load_adapter_body("sql", "org/sql-lora"), "unload": unload_adapter_body("sql")}
    out = subprocess.run([str(need("vllm-python")), str(SUPPORT / "vllm_lora_check.py")], input=json.dumps(bodies),
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.splitlines()[-1])
    assert seen["routes_without_env"] == []
    assert seen["routes_with_env"] == [[LOAD_ADAPTER_PATH, ["POST"]], [UNLOAD_ADAPTER_PATH, ["POST"]]]
    assert seen["load"]["lora_name"] == "sql" and seen["load"]["lora_path"] == "org/sql-lora"
    assert seen["unload"]["lora_name"] == "sql"
    assert {"id", "root", "parent"} <= set(seen["model_card_fields"])  # what listed_adapters reads


def test_sglang_parses_every_adapter_command_line() -> None:
    results = run_checker("sglang-python", SUPPORT / "sglang_check.py", [c.container["args"] for c in SGLANG_CASES])
    for c, result in zip(SGLANG_CASES, results, strict=True):
        assert result["ok"], f"{c.id}: SGLang refused {c.container['args']}: {result['error']}"
        values = result["parsed"]
        assert values["enable_lora"] is True
        paths = values["lora_paths"]
        text = str(paths)
        for a in c.engine.spec.adapters:
            assert a.name in text and a.source in text, paths


# --- llama-server with a real LoRA GGUF --------------------------------------------------------------


def answer(url: str, body: dict[str, Any]) -> str:
    resp = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["choices"][0]["message"]["content"])


def test_llama_server_serves_the_base_and_each_adapter_from_one_replica(tiny_gguf: Path) -> None:
    need("llama-server")
    adapters = [{"name": "tiny-sql", "source": "loras/sql.gguf"},
                {"name": "tiny-half", "source": "https://h/half.gguf", "scale": 0.5}]  # fmt: skip
    c = case("llamacpp-lora", "llamacpp", adapters=adapters)
    # Both adapters are the tiny model's LoRA here (engines.llama_server maps each --lora-scaled file to
    # it, keeping the rendered scale): what is checked is the rendered command line.
    proc = engines.llama_server(c.container, tiny_gguf, ARTIFACTS / "logs", name="llama-lora")
    try:
        proc.start(timeout=60)
        url = proc.url  # type: ignore[attr-defined]
        loaded = httpx.get(f"{url}/lora-adapters", timeout=10).json()
        # Loaded in spec order at scale 0 (requests for the base apply none): the ids the gateway sends.
        assert [(a["id"], a["scale"]) for a in loaded] == [(0, 0.0), (1, 0.0)], loaded
        family = FAMILIES[c.engine.spec.engine]
        prompt = {"messages": [{"role": "user", "content": "the engine and the gateway"}], "max_tokens": 12,
                  "temperature": 0, "model": family.upstream_model(c.engine.spec)}  # fmt: skip
        base = answer(url, prompt)
        assert answer(url, prompt) == base  # temperature 0 is deterministic
        routes = adapter_routes(c.engine.spec)
        with_sql = answer(url, routes["tiny-sql"].rewrite({**prompt, "model": "tiny-sql"}))
        assert with_sql != base, (with_sql, base)
        assert answer(url, routes["tiny-half"].rewrite({**prompt, "model": "tiny-half"})) != base
        # Asking for the base again goes back to the base's answer (per request, not global).
        assert answer(url, prompt) == base
        assert routes["tiny-half"].rewrite(prompt)["lora"] == [{"id": 1, "scale": 0.5}]
    finally:
        proc.stop()

"""LoRA adapters through the real gateway: listed as models with their base as parent, allowed or
refused per key, routed only to replicas that hold them (vLLM loads them at run time: the engine
simulator with vLLM's adapter routes), and, on the real llama-server, turned into a request for the
base with the per-request "lora" field: the answer differs from the base's and equals the engine's
own with the adapter applied."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support import engines, processes, tinygguf
from tests.support.cluster import wait_until
from tests.support.processes import Process

pytestmark = pytest.mark.integration
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "adapters-gateway"
KEY, SQL_ONLY, ADMIN = "sk-adapters", "sk-sql-only", "admin-adapters"
KEYS = {"keys": [{"name": "all", "key": KEY}, {"name": "sql-only", "key": SQL_ONLY, "models": ["sql"]}]}


def ie(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine", "metadata": {"name": name},
            "spec": spec}  # fmt: skip


def start_gateway(tmp: Path, docs: list[dict[str, Any]]) -> Process:
    config = tmp / "adapters.yaml"
    config.write_text(yaml.safe_dump_all(docs))
    return processes.gateway(config, ARTIFACTS, [], [ADMIN], key_file=json.dumps(KEYS)).start()


SENT: list[str] = []  # the models asked for, in order (usage is compared with it)


def chat(url: str, model: str, key: str = KEY, **extra: Any) -> httpx.Response:
    SENT.append(model)
    return httpx.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                      json={"model": model, "messages": [{"role": "user", "content": "a lora"}], **extra})  # fmt: skip


@pytest.fixture
def replicas() -> Iterator[dict[str, Process]]:
    sims = {"r1": processes.enginesim("vllm", "r1", ["m"], ARTIFACTS, runtime_lora=True, lora_module="sql=/lora/sql"),
            "r2": processes.enginesim("vllm", "r2", ["m"], ARTIFACTS, runtime_lora=True)}  # fmt: skip
    for p in sims.values():
        p.start()
    yield sims
    for p in sims.values():
        p.stop()


def test_adapters_are_models_routed_only_to_replicas_that_hold_them(replicas: dict[str, Process],
                                                                     tmp_path: Path) -> None:  # fmt: skip
    SENT.clear()
    urls = [p.url for p in replicas.values()]  # type: ignore[attr-defined]
    adapters = [{"name": "sql", "source": "org/sql-lora"}, {"name": "chat", "source": "org/chat-lora"}]
    gw = start_gateway(tmp_path, [ie("base", {"engine": "vllm", "model": {"source": "org/m", "servedName": "m"},
                                              "adapters": adapters, "endpoints": urls})])  # fmt: skip
    try:
        url = str(gw.url)  # type: ignore[attr-defined]
        models = {m["id"]: m for m in httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"})
                  .json()["data"]}  # fmt: skip
        assert set(models) == {"m", "sql", "chat"} and models["sql"]["parent"] == "m" and "parent" not in models["m"]
        # Only r1 holds sql (the simulator answers 404 for an adapter it does not hold): every request there.
        wait_until(lambda: chat(url, "sql").status_code == 200, 10, "the probes to read r1's adapters")
        answers = [chat(url, "sql") for _ in range(12)]
        assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
        r2_before = len(httpx.get(f"{urls[1]}/_sim/log").json())
        assert r2_before == 0
        # Nobody holds chat yet: a clear 503, then routed once r2 has loaded it.
        loading = chat(url, "chat")
        assert loading.status_code == 503 and loading.json()["error"]["code"] == "adapter_loading", loading.text
        httpx.post(f"{urls[1]}/v1/load_lora_adapter", json={"lora_name": "chat", "lora_path": "/lora/chat"})
        wait_until(lambda: chat(url, "chat").status_code == 200, 10, "chat routed once r2 lists it")
        assert all(e["status"] == 200 for e in httpx.get(f"{urls[1]}/_sim/log").json())
        # The base model goes to both replicas as before.
        assert all(chat(url, "m").status_code == 200 for _ in range(6))
        # A key allowed one adapter gets OpenAI's 404 for the others and for the base.
        assert chat(url, "sql", SQL_ONLY).status_code == 200
        for other in ("chat", "m"):
            refused = chat(url, other, SQL_ONLY)
            assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"
        # Usage is counted per adapter name.
        usage = httpx.get(url + "/admin/usage", headers={"Authorization": f"Bearer {ADMIN}"}).json()
        sql = [r for r in usage["rows"] if r["model"] == "sql"]
        assert sum(r["requests"] for r in sql) == SENT.count("sql")
    finally:
        gw.stop()


def test_a_llama_server_adapter_through_the_gateway_answers_as_the_engine_does(tmp_path: Path) -> None:
    gguf = tinygguf.write(tmp_path / "tiny.gguf")
    # The engine as the operator renders it for two adapters: each --lora-scaled file at scale 0 (both
    # are the tiny model's LoRA here), so a request without "lora" is the base.
    container = engines.llama_container(extra=("--lora-scaled", "/loras/sql.gguf:0", "--lora-scaled",
                                               "/loras/half.gguf:0"))  # fmt: skip
    server = engines.llama_server(container, gguf, ARTIFACTS, name="llama-adapters").start(timeout=60)
    adapters = [{"name": "tiny-sql", "source": "/loras/sql.gguf"},
                {"name": "tiny-half", "source": "/loras/half.gguf", "scale": 0.5}]  # fmt: skip
    gw = start_gateway(tmp_path, [ie("tiny", {"engine": "llamacpp", "model": {"source": str(gguf),
                                                                             "servedName": "tiny"},
                                              "adapters": adapters, "endpoints": [server.url]})])  # type: ignore[attr-defined]  # fmt: skip
    try:
        url, direct = str(gw.url), str(server.url)  # type: ignore[attr-defined]
        greedy = {"max_tokens": 12, "temperature": 0}
        base = chat(url, "tiny", **greedy)
        sql = chat(url, "tiny-sql", **greedy)
        assert base.status_code == sql.status_code == 200, (base.text, sql.text)
        text = [r.json()["choices"][0]["message"]["content"] for r in (base, sql)]
        assert text[0] != text[1]  # the adapter changes the answer
        own = httpx.post(direct + "/v1/chat/completions", timeout=60,
                         json={"model": "tiny", "messages": [{"role": "user", "content": "a lora"}], **greedy,
                               "lora": [{"id": 0, "scale": 1.0}]}).json()  # fmt: skip
        assert own["choices"][0]["message"]["content"] == text[1]  # the engine's own answer with the adapter
        half = chat(url, "tiny-half", **greedy).json()["choices"][0]["message"]["content"]
        own_half = httpx.post(direct + "/v1/chat/completions", timeout=60,
                              json={"model": "tiny", "messages": [{"role": "user", "content": "a lora"}], **greedy,
                                    "lora": [{"id": 1, "scale": 0.5}]}).json()  # fmt: skip
        assert half == own_half["choices"][0]["message"]["content"]
        assert chat(url, "tiny", **greedy).json()["choices"][0]["message"]["content"] == text[0]  # per request
    finally:
        gw.stop()
        server.stop()

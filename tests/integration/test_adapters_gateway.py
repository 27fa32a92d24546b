"""LoRA adapters through the real gateway: listed as models with their base as parent, allowed or
refused per key, routed only to replicas that hold them (vLLM loads them at run time: the engine
simulator with vLLM's adapter routes), and, on the real llama-server, turned into a request for the
base with the per-request "lora" field (the operator's rendered command line, two different LoRA
files): each adapter's answer differs from the base's and the other's and equals the engine's own
with that adapter applied."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from roundhouse_api import InferenceEngine
from roundhouse_operator.render import render
from tests.support import engines, processes, tinygguf, tinylora
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


def rendered_container(spec: dict[str, Any]) -> dict[str, Any]:
    """The engine container the operator renders for `spec` (one replica)."""
    doc = {**ie("tiny", spec), "metadata": {"name": "tiny", "namespace": "adapters", "uid": "adapters-uid"}}
    objects = render(InferenceEngine.model_validate(doc), 1)
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    return dict(deployment["spec"]["template"]["spec"]["containers"][0])


def test_a_llama_server_adapter_through_the_gateway_answers_as_the_engine_does(tmp_path: Path) -> None:
    gguf = tinygguf.write(tmp_path / "tiny.gguf")
    # Two different LoRA files (seeds 1 and 2, as the e2e test writes them), so that an adapter
    # answered with the other's id would show: the tiny LoRA outweighs the model, so one file answers
    # alike at scale 0.5 and 1, and with one file for both, both adapters would answer alike.
    (tmp_path / "loras").mkdir()
    files = {f"/loras/{name}.gguf": tinylora.write(tmp_path / "loras" / f"{name}.gguf", seed=seed)
             for name, seed in (("sql", 1), ("half", 2))}  # fmt: skip
    adapters = [{"name": "tiny-sql", "source": "/loras/sql.gguf"},
                {"name": "tiny-half", "source": "/loras/half.gguf", "scale": 0.5}]  # fmt: skip
    spec = {"engine": "llamacpp", "model": {"source": "/models/tiny.gguf", "servedName": "tiny"}, "adapters": adapters}
    # The command line the operator renders for this spec (each file --lora-scaled at 0, in spec order,
    # with --lora-init-without-apply), run here with the two files at the rendered paths.
    container = rendered_container(spec)
    assert container["args"][-5:] == ["--lora-scaled", "/loras/sql.gguf:0", "--lora-scaled", "/loras/half.gguf:0",
                                      "--lora-init-without-apply"], container["args"]  # fmt: skip
    server = engines.llama_server(container, gguf, ARTIFACTS, name="llama-adapters", loras=files).start(timeout=60)
    gw = start_gateway(tmp_path, [ie("tiny", {**spec, "endpoints": [server.url]})])  # type: ignore[attr-defined]
    try:
        url, direct = str(gw.url), str(server.url)  # type: ignore[attr-defined]
        loaded = httpx.get(direct + "/lora-adapters", timeout=10).json()
        assert [(a["id"], a["path"], a["scale"]) for a in loaded] == [
            (i, str(f), 0.0) for i, f in enumerate(files.values())
        ], loaded  # both files, in spec order (the ids the gateway sends), applied to no request by default
        greedy: dict[str, Any] = {"max_tokens": 12, "temperature": 0}

        def through(model: str) -> str:
            r = chat(url, model, **greedy)
            assert r.status_code == 200, r.text
            return str(r.json()["choices"][0]["message"]["content"])

        def own(lora: list[dict[str, Any]] | None) -> str:
            """The engine's own answer, asked directly, with `lora` as the per-request field (None: none)."""
            body = {"model": "tiny", "messages": [{"role": "user", "content": "a lora"}], **greedy}
            r = httpx.post(direct + "/v1/chat/completions", timeout=60, json=body | ({"lora": lora} if lora else {}))
            assert r.status_code == 200, r.text
            return str(r.json()["choices"][0]["message"]["content"])

        base, sql, half = through("tiny"), through("tiny-sql"), through("tiny-half")
        assert base == own(None)
        # Each adapter's answer is the engine's own with that adapter applied (the other named at 0, or
        # not named: it stays at the command line's 0 either way).
        assert sql == own([{"id": 0, "scale": 1.0}]) == own([{"id": 0, "scale": 1.0}, {"id": 1, "scale": 0.0}])
        assert half == own([{"id": 1, "scale": 0.5}]) == own([{"id": 0, "scale": 0.0}, {"id": 1, "scale": 0.5}])
        # Each adapter changes the answer, each in its own way.
        assert len({base, sql, half}) == 3, (base, sql, half)
        # The two files answer differently at the same scale too: with the ids swapped, tiny-sql would be
        # answered as half.gguf at 1 answers, and would not equal its own answer above.
        assert own([{"id": 0, "scale": 1.0}]) != own([{"id": 1, "scale": 1.0}])
        assert through("tiny") == base  # per request: asking for the base again applies no adapter
    finally:
        gw.stop()
        server.stop()

"""Standalone mode onDemand with the real llama-server: the gateway runs the engines of its config as
local processes from the command line the operator would render, one at a time within the budget,
swapping them as requests ask (SIGTERM to the old process before the new one starts), with each
engine's output in its own log; an engine that crashes is reported and not restarted in a loop."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support import engines, processes, tinygguf
from tests.support.processes import Process

pytestmark = pytest.mark.integration
KEY, ADMIN = "sk-local", "admin-local"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "standalone-on-demand"


def ie(name: str, gguf: Path, gpus: int = 1, **llamacpp: Any) -> dict[str, Any]:
    return {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine", "metadata": {"name": name},
            "spec": {"engine": "llamacpp", "model": {"source": str(gguf), "servedName": name}, "gpus": gpus,
                     "llamacpp": {"contextSize": 512, **llamacpp}}}  # fmt: skip


def standalone(work: Path, name: str, docs: list[dict[str, Any]], logs: Path) -> Process:
    """The standalone gateway running `docs`, with the llama-server build on PATH (as on a laptop with
    llama.cpp installed: the family's binary is found there)."""
    config = work / f"{name}.yaml"
    config.write_text(yaml.safe_dump_all(docs))
    env = {**os.environ, "PATH": f"{engines.binary('llama-server').parent}:{os.environ['PATH']}"}
    extra = ("--engine-log-dir", str(logs), "--engine-cache-dir", str(work / "cache"))
    return processes.gateway(config, ARTIFACTS, [KEY], [ADMIN], env=env, extra=extra).start()


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Process, Path]]:
    work = tmp_path_factory.mktemp("box")
    gguf = tinygguf.write(work / "tiny.gguf")
    mode = {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "EngineMode", "metadata": {"name": "box"},
            "spec": {"mode": "onDemand", "onDemand": {"gpuBudget": 1, "minActiveSeconds": 0, "drainSeconds": 5,
                                                      "maxWaitSeconds": 60}}}  # fmt: skip
    docs = [mode, ie("one", gguf), ie("two", gguf), ie("broken", gguf, gpus=0, extraArgs=["--no-such-flag"])]
    logs = work / "engine-logs"
    proc = standalone(work, "box", docs, logs)
    since = proc.log_path.stat().st_size  # the log is appended to across runs
    yield proc, logs
    proc.stop()
    assert not ours("one") and not ours("two"), "the gateway left engine processes behind"
    # Stopping its engines on the way out is not a crash: only `broken` may be reported as failed.
    lines = proc.log_path.read_bytes()[since:].decode(errors="replace").splitlines()
    failed = [ln for ln in lines if '"engine failed"' in ln and '"engine": "broken"' not in ln]
    assert not failed, failed


def ours(alias: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", f"llama-server.*--alias {alias}( |$)"], capture_output=True, text=True)
    return [ln for ln in out.stdout.splitlines() if "pgrep" not in ln]


def chat(url: str, model: str, stream: bool = False) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=90,
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                            "stream": stream})  # fmt: skip


def phases(url: str) -> dict[str, str]:
    r = httpx.get(f"{url}/admin/engines", headers={"Authorization": f"Bearer {ADMIN}"})
    return {e["name"]: e["phase"] for e in r.json()["engines"]}


def test_engines_start_on_demand_and_swap_within_the_budget(box: tuple[Process, Path]) -> None:
    gateway, logs = box
    url = gateway.url  # type: ignore[attr-defined]
    assert phases(url) == {"one": "Standby", "two": "Standby", "broken": "Standby"}
    assert not ours("one") and not ours("two")
    models = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert {m["id"] for m in models["data"]} == {"one", "two", "broken"}  # standby models are listed

    first = chat(url, "one")
    assert first.status_code == 200 and first.json()["choices"][0]["message"]["content"] is not None, first.text
    assert "activated:one:" in first.headers["x-roundhouse-route-reason"]
    assert len(ours("one")) == 1 and not ours("two")
    again = chat(url, "one")  # running: no swap, no wait
    assert "activated" not in again.headers["x-roundhouse-route-reason"]

    second = chat(url, "two", stream=True)
    assert second.status_code == 200 and second.text.rstrip().endswith("data: [DONE]"), second.text[-300:]
    assert second.text.startswith(": waiting for two\n\n")
    assert not ours("one") and len(ours("two")) == 1  # one stopped before two started: budget 1
    assert phases(url)["one"] == "Standby" and phases(url)["two"] == "Ready"

    one_log = (logs / "one.log").read_text()
    assert one_log.count("--- roundhouse: start") == 1 and "--alias" in one_log
    assert "listening on http://127.0.0.1:" in one_log, one_log[-2000:]  # llama-server's own output
    assert "cleaning up before exit" in one_log  # it stopped on SIGTERM, not SIGKILL
    assert (logs / "two.log").exists()


def test_a_crashed_engine_is_reported_and_not_restarted_in_a_loop(box: tuple[Process, Path]) -> None:
    gateway, logs = box
    url = gateway.url  # type: ignore[attr-defined]
    r = chat(url, "broken")
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert err["code"] == "engine_failed" and "exited with code" in err["message"], err
    assert "--no-such-flag" in err["message"] or "invalid argument" in err["message"], err["message"]
    assert phases(url)["broken"] == "Failed"
    time.sleep(2)
    again = chat(url, "broken")
    assert again.status_code == 503 and again.json()["error"]["code"] == "engine_failed"
    assert (logs / "broken.log").read_text().count("--- roundhouse: start") == 1  # started once, not in a loop


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """One model, two context variants (256 and 2048 tokens), one GPU for either."""
    work = tmp_path_factory.mktemp("variants")
    gguf = tinygguf.write(work / "tiny.gguf", context_length=4096)
    mode = {
        "apiVersion": "roundhouse.dev/v1alpha1",
        "kind": "EngineMode",
        "metadata": {"name": "box"},
        "spec": {"mode": "onDemand", "onDemand": {"gpuBudget": 1, "minActiveSeconds": 0, "drainSeconds": 5}},
    }
    docs = [mode]
    for name, ctx in (("small", 256), ("large", 2048)):
        doc = ie(name, gguf, contextSize=ctx, parallel=1)
        doc["spec"]["model"]["servedName"] = "tiny"
        docs.append(doc)
    proc = standalone(work, "variants", docs, work / "logs")
    yield proc
    proc.stop()


def ask(url: str, content: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=90,
        json={"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 8},
    )


def test_the_smallest_variant_that_fits_by_the_engines_own_token_count(variants: Process) -> None:
    """A prompt of 800 characters is about 200 tokens by the estimate, which the 256-token variant
    would take; the running engine's tokenizer says this byte-level model needs about 800, so the
    2048-token variant is started for it instead, and the answer's usage agrees with the count."""
    url = variants.url  # type: ignore[attr-defined]
    short = ask(url, "hi")
    assert short.status_code == 200 and short.headers["x-roundhouse-engine"] == "small", short.text
    assert "activated:small:" in short.headers["x-roundhouse-route-reason"]  # the smallest that fits
    long = ask(url, "the engine is a model " * 36)  # 792 characters
    assert long.status_code == 200 and long.headers["x-roundhouse-engine"] == "large", long.text
    reason = long.headers["x-roundhouse-route-reason"]
    assert "tokens:exact" in reason and "activated:large:" in reason, reason
    counted = int(reason.split("context:", 1)[1].split(",", 1)[0]) - 8  # need = prompt + max_tokens
    assert counted == long.json()["usage"]["prompt_tokens"] > 256  # exact, as llama-server itself counts
    assert ask(url, "hi").headers["x-roundhouse-engine"] == "large"  # it runs and fits: no swap back

"""Keys with identities in front of the real llama-server: per-key models and engines, requests and
tokens per minute counted from the engine's own usage, a monthly budget, usage by key, and a key
file reloaded while the gateway runs. The openai SDK is the client."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.support import engines, processes, tinygguf
from tests.support.cluster import wait_until
from tests.support.processes import Process

pytestmark = pytest.mark.integration
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "keys"
ADMIN = "admin-keys"
KEYS: list[dict[str, Any]] = [
    {"name": "rpm", "key": "sk-rpm", "requestsPerMinute": 2},
    {"name": "tpm", "key": "sk-tpm", "tokensPerMinute": 40},
    {"name": "budget", "key": "sk-budget", "monthlyTokenBudget": 60},
    {"name": "other-models", "key": "sk-other", "models": ["other-*"]},
    {"name": "other-engines", "key": "sk-eng", "engines": ["gpu-*"]},
    {"name": "free", "key": "sk-free"},
]
RPM_STARTED: list[float] = []  # when the rpm key's window began: the last test waits it out


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    gguf = tinygguf.write(tmp_path_factory.mktemp("model") / "tiny.gguf")
    proc = engines.llama_server(engines.llama_container(alias="tiny"), gguf, ARTIFACTS, name="llama-keys")
    yield proc.start(timeout=60)
    proc.stop()


@pytest.fixture(scope="module")
def gw(llama: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    doc = {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine", "metadata": {"name": "tiny-llama"},
           "spec": {"engine": "llamacpp", "model": {"source": "/m/tiny.gguf", "servedName": "tiny"},
                    "endpoints": [llama.url]}}  # type: ignore[attr-defined]  # fmt: skip
    config = tmp_path_factory.mktemp("gw") / "keys.yaml"
    config.write_text(yaml.safe_dump(doc))
    proc = processes.gateway(config, ARTIFACTS, [], [ADMIN], key_file=key_file(KEYS)).start()
    wait_until(lambda: httpx.get(proc.url + "/v1/models", headers=bearer("sk-free")).json()["data"], 30,  # type: ignore[attr-defined]
               "the engine listed")  # fmt: skip
    wait_until(lambda: chat_status(proc, "sk-free") == 200, 30, "the engine answering")
    yield proc
    proc.stop()


def key_file(keys: list[dict[str, Any]], headers: str | None = "always") -> str:
    """The key file; `headers`: its rateLimitHeaders (None: the default, only 429s carry them)."""
    return yaml.safe_dump({"keys": keys, **({"rateLimitHeaders": headers} if headers else {})})


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def client(gw: Process, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=60)  # type: ignore[attr-defined]


def chat(gw: Process, key: str, **extra: Any) -> httpx.Response:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4, **extra}
    return httpx.post(gw.url + "/v1/chat/completions", headers=bearer(key), json=body, timeout=60)  # type: ignore[attr-defined]


def chat_status(gw: Process, key: str) -> int:
    return chat(gw, key).status_code


def test_a_key_over_its_requests_per_minute_gets_429_with_openai_headers(gw: Process) -> None:
    RPM_STARTED.append(time.monotonic())
    first = client(gw, "sk-rpm").chat.completions.with_raw_response.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2)  # fmt: skip
    assert first.headers["x-ratelimit-limit-requests"] == "2" and first.headers["x-ratelimit-remaining-requests"] == "1"
    assert chat_status(gw, "sk-rpm") == 200
    with pytest.raises(openai.RateLimitError) as err:
        client(gw, "sk-rpm").chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    r = err.value.response
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
    assert r.json()["error"]["type"] == "requests" and "(RPM): Limit 2, Used 2" in r.json()["error"]["message"]
    assert 1 <= int(r.headers["retry-after"]) <= 60 and r.headers["x-ratelimit-remaining-requests"] == "0"
    assert r.headers["x-ratelimit-reset-requests"].endswith("s")
    assert chat_status(gw, "sk-free") == 200  # another key is not limited by this one


def test_tokens_per_minute_are_counted_from_the_engines_usage(gw: Process) -> None:
    first = chat(gw, "sk-tpm")
    assert first.status_code == 200, first.text
    used = first.json()["usage"]["total_tokens"]
    assert first.headers["x-ratelimit-remaining-tokens"] == "40"  # nothing spent before this request
    statuses = []
    spent = used
    while spent < 40:
        r = chat(gw, "sk-tpm")
        statuses.append(r.status_code)
        assert r.status_code == 200, r.text
        assert int(r.headers["x-ratelimit-remaining-tokens"]) == 40 - spent  # what the engine reported so far
        spent += r.json()["usage"]["total_tokens"]
    refused = chat(gw, "sk-tpm")
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "tokens", refused.text
    assert f"(TPM): Limit 40, Used {spent}" in refused.json()["error"]["message"]
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0" and int(refused.headers["retry-after"]) >= 1


def test_an_exhausted_monthly_budget_refuses_with_a_clear_message(gw: Process) -> None:
    spent = 0
    while spent < 60:
        r = chat(gw, "sk-budget")
        assert r.status_code == 200, r.text
        spent += r.json()["usage"]["total_tokens"]
    refused = chat(gw, "sk-budget")
    error = refused.json()["error"]
    assert refused.status_code == 429 and error["code"] == error["type"] == "insufficient_quota"
    assert f"Key `budget` has used {spent} of its monthly budget of 60 tokens; the budget renews on" in error["message"]
    with pytest.raises(openai.RateLimitError):
        client(gw, "sk-budget").chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}])
    keys = httpx.get(gw.url + "/admin/keys", headers=bearer(ADMIN)).json()  # type: ignore[attr-defined]
    assert {k["name"]: k["monthTokensUsed"] for k in keys["keys"]}["budget"] == spent
    assert keys["limitsScope"] == "replica" and "sk-" not in str(keys)


@pytest.mark.parametrize("key", ["sk-other", "sk-eng"])
def test_a_key_not_allowed_a_model_or_its_engines_gets_openais_404(gw: Process, key: str) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client(gw, key).chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}])
    error = err.value.response.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert error["message"] == "The model `tiny` does not exist or you do not have access to it."


def test_a_stream_is_counted_without_the_usage_chunk_the_client_did_not_ask_for(gw: Process) -> None:
    before = usage_row(gw, "free")
    chunks = list(client(gw, "sk-free").chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "count"}], max_tokens=5, stream=True))  # fmt: skip
    assert chunks and all(c.usage is None for c in chunks), [c.model_dump() for c in chunks][-2:]
    assert all(c.choices for c in chunks)
    after = usage_row(gw, "free")
    assert after["requests"] == before["requests"] + 1 and after["completionTokens"] > before["completionTokens"]
    asked = list(client(gw, "sk-free").chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "count"}], max_tokens=5, stream=True,
        stream_options={"include_usage": True}))  # fmt: skip
    assert asked[-1].usage is not None and asked[-1].usage.completion_tokens > 0  # asked for: passed on


def usage_row(gw: Process, key: str) -> dict[str, Any]:
    report = httpx.get(gw.url + "/admin/usage", params={"key": key}, headers=bearer(ADMIN)).json()  # type: ignore[attr-defined]
    rows = [r for r in report["rows"] if r["model"] == "tiny" and r["engine"] == "tiny-llama"]
    return rows[0] if rows else {"requests": 0, "promptTokens": 0, "completionTokens": 0, "errors": 0}


def test_usage_by_key_model_engine_and_day_in_admin_and_prometheus(gw: Process) -> None:
    report = httpx.get(gw.url + "/admin/usage", headers=bearer(ADMIN)).json()  # type: ignore[attr-defined]
    today = time.strftime("%Y-%m-%d", time.gmtime())
    rows = {(r["key"], r["model"], r["engine"]): r for r in report["rows"] if r["day"] == today}
    assert rows[("tpm", "tiny", "tiny-llama")]["promptTokens"] > 0
    assert rows[("tpm", "tiny", "")]["errors"] >= 1  # the 429, which no engine served
    assert rows[("other-models", "tiny", "")]["errors"] == 1
    assert report["totals"]["rpm"]["requests"] == 3 and report["totals"]["rpm"]["errors"] == 1
    assert sum(m["tokens"].get("budget", 0) for m in report["tokensPerMinute"]) >= 60
    assert "sk-" not in str(report)
    text = httpx.get(gw.url + "/metrics").text  # type: ignore[attr-defined]
    assert 'roundhouse_gateway_key_tokens_total{key="tpm",model="tiny",type="prompt"}' in text
    assert 'roundhouse_gateway_rate_limited_total{key="budget",limit="insufficient_quota"}' in text
    assert 'roundhouse_gateway_key_errors_total{key="rpm",model="tiny",status="429"} 1.0' in text


def test_a_changed_key_file_is_in_force_within_two_seconds(gw: Process) -> None:
    path: Path = gw.key_file  # type: ignore[attr-defined]
    assert chat_status(gw, "sk-late") == 401
    path.write_text(key_file([*KEYS, {"name": "late", "key": "sk-late", "requestsPerMinute": 100}], headers=None))
    changed = time.monotonic()
    wait_until(lambda: chat_status(gw, "sk-late") == 200, 5, "the new key accepted", interval=0.05)
    took = time.monotonic() - changed
    # By default only a 429 carries the x-ratelimit-* headers (they cost CPU on every answer).
    assert not [h for h in chat(gw, "sk-late").headers if h.startswith("x-ratelimit-")]
    path.write_text("keys: [{name: broken}]\n")  # unusable: the keys in force stay
    wait_until(lambda: httpx.get(gw.url + "/admin/keys", headers=bearer(ADMIN)).json()["reloadError"], 5,  # type: ignore[attr-defined]
               "the reload error shown")  # fmt: skip
    assert chat_status(gw, "sk-late") == 200
    path.write_text(key_file(KEYS))
    wait_until(lambda: chat_status(gw, "sk-late") == 401, 5, "the removed key refused", interval=0.05)
    assert took <= 2, took
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "reload.txt").write_text(f"key file change in force after {took:.2f}s\n")


def test_the_requests_per_minute_window_frees_up(gw: Process) -> None:
    assert RPM_STARTED, "runs after the first test of the module"
    while time.monotonic() - RPM_STARTED[0] < 61:
        time.sleep(0.5)
    assert chat_status(gw, "sk-rpm") == 200

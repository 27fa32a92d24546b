"""LoRA adapters through the real control plane and the operator: a vLLM engine (the simulator's vLLM
flavour, with run-time LoRA updating, behind spec.endpoints) gets spec.adapters loaded while it runs; a
load the engine refuses is reported with the engine's own message; adapters taken out of the spec are
unloaded, and the engine is never restarted. With two replicas, every adapter added or removed
reaches each of them."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from roundhouse_api.families.vllm import listed_adapters
from tests.support import processes
from tests.support.cluster import Cluster, wait_until
from tests.support.processes import Process

pytestmark = pytest.mark.integration
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "adapters"


@pytest.fixture
def sim() -> Iterator[Process]:
    proc = processes.enginesim("vllm", "lora", ["m"], ARTIFACTS, runtime_lora=True).start()
    yield proc
    proc.stop()


@pytest.fixture
def two_sims() -> Iterator[list[Process]]:
    """Two replicas of one vLLM engine (spec.endpoints lists both), each keeping what is loaded on it."""
    procs = [processes.enginesim("vllm", f"lora-r{i}", ["m"], ARTIFACTS, runtime_lora=True) for i in (1, 2)]
    try:
        for p in procs:
            p.start()
        yield procs
    finally:
        for p in procs:
            p.stop()


def engine(url: str | list[str], adapters: list[dict[str, Any]]) -> dict[str, Any]:
    urls = [url] if isinstance(url, str) else url
    spec = {"engine": "vllm", "model": {"source": "org/m", "servedName": "m"}, "endpoints": urls,
            "adapters": adapters}  # fmt: skip
    return {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine", "metadata": {"name": "lora"},
            "spec": spec}  # fmt: skip


def listed(url: str) -> dict[str, str]:
    return listed_adapters(httpx.get(url + "/v1/models", timeout=5).content)


def adapters_status(c: Cluster, namespace: str) -> dict[str, tuple[int, str | None]]:
    st = c.get("ie", "lora", namespace).get("status") or {}
    return {a["name"]: (a.get("loadedReplicas", 0), a.get("message")) for a in st.get("adapters", [])}


def loaded_condition(c: Cluster, namespace: str) -> dict[str, Any]:
    st = c.get("ie", "lora", namespace).get("status") or {}
    return next((x for x in st.get("conditions", []) if x["type"] == "AdaptersLoaded"), {})


def test_adapters_are_loaded_reported_and_unloaded_at_run_time(
    operator: Process, crds: Cluster, namespace: str, sim: Process
) -> None:
    c, url = crds, sim.url  # type: ignore[attr-defined]
    c.apply(engine(url, [{"name": "sql", "source": "org/sql-lora"},
                         {"name": "bad", "source": "/models/missing-lora"}]), namespace)  # fmt: skip
    wait_until(lambda: listed(url) == {"sql": "org/sql-lora"}, 30, "sql loaded on the engine")
    wait_until(lambda: adapters_status(c, namespace).get("sql") == (1, None), 30, "sql reported on 1 replica")
    loaded, message = adapters_status(c, namespace)["bad"]
    assert loaded == 0 and message is not None
    assert "No adapter found for /models/missing-lora" in message and url in message, message
    cond = loaded_condition(c, namespace)
    assert (cond["status"], cond["reason"]) == ("False", "LoadFailed") and "bad: " in cond["message"], cond
    events = json.loads(c.kubectl("get", "events", "-o", "json", namespace=namespace).stdout)["items"]
    assert any(e["reason"] == "LoadFailed" and "missing-lora" in e["message"] for e in events), events

    # A request for the adapter reaches the engine under the adapter's own name.
    answer = httpx.post(url + "/v1/chat/completions", timeout=5,
                        json={"model": "sql", "messages": [{"role": "user", "content": "x"}]})  # fmt: skip
    assert answer.status_code == 200, answer.text

    patch = {"spec": {"adapters": [{"name": "chat", "source": "/models/chat"}]}}
    c.kubectl("patch", "ie", "lora", "--type", "merge", "-p", json.dumps(patch), namespace=namespace)
    wait_until(lambda: listed(url) == {"chat": "/models/chat"}, 30, "sql unloaded and chat loaded")
    wait_until(lambda: adapters_status(c, namespace) == {"chat": (1, None)}, 30, "only chat reported")
    wait_until(lambda: loaded_condition(c, namespace).get("status") == "True", 30, "AdaptersLoaded True")
    assert sim.alive()  # nothing restarted it


def lists_on_each(urls: list[str], want: dict[str, str], what: str) -> None:
    """Wait until each replica's own /v1/models (not the operator's report of them) lists `want`."""
    for url in urls:
        wait_until(functools.partial(lambda u: listed(u) == want, url), 30, f"{what} on {url}")


def answers(url: str, model: str) -> int:
    """The status a replica itself answers a request for `model` with (the simulator: 404 for one it does not hold)."""
    body = {"model": model, "messages": [{"role": "user", "content": "x"}]}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=5).status_code


def test_adapters_added_and_removed_at_run_time_reach_every_replica(
    operator: Process, crds: Cluster, namespace: str, two_sims: list[Process]
) -> None:
    c, urls = crds, [str(p.url) for p in two_sims]  # type: ignore[attr-defined]
    sql, chat = {"name": "sql", "source": "org/sql-lora"}, {"name": "chat", "source": "/models/chat"}
    c.apply(engine(urls, [sql]), namespace)
    lists_on_each(urls, {"sql": "org/sql-lora"}, "sql loaded")
    wait_until(lambda: adapters_status(c, namespace) == {"sql": (2, None)}, 30, "sql reported on 2 replicas")
    assert [answers(url, "sql") for url in urls] == [200, 200]

    # Added while the replicas run: loaded on both.
    patch = {"spec": {"adapters": [sql, chat]}}
    c.kubectl("patch", "ie", "lora", "--type", "merge", "-p", json.dumps(patch), namespace=namespace)
    lists_on_each(urls, {"sql": "org/sql-lora", "chat": "/models/chat"}, "chat loaded beside sql")
    wait_until(lambda: adapters_status(c, namespace) == {"sql": (2, None), "chat": (2, None)}, 30,
               "both adapters reported on 2 replicas")  # fmt: skip
    assert [answers(url, "chat") for url in urls] == [200, 200]

    # Taken out of the spec: unloaded from both, the other adapter kept.
    patch = {"spec": {"adapters": [chat]}}
    c.kubectl("patch", "ie", "lora", "--type", "merge", "-p", json.dumps(patch), namespace=namespace)
    lists_on_each(urls, {"chat": "/models/chat"}, "sql unloaded, chat kept")
    wait_until(lambda: adapters_status(c, namespace) == {"chat": (2, None)}, 30, "only chat reported, on 2 replicas")
    assert [answers(url, "sql") for url in urls] == [404, 404]  # neither replica serves it any more
    assert [answers(url, "chat") for url in urls] == [200, 200]
    assert all(p.alive() for p in two_sims)  # unloaded at run time: neither replica was restarted

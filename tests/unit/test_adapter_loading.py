"""The operator's run-time adapter loading (vLLM): the load/unload plan over what each replica lists on
/v1/models, and the adapters' status and condition."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from roundhouse_api import Adapter
from roundhouse_api.families import FAMILIES
from roundhouse_api.families.vllm import LOAD_ADAPTER_PATH, UNLOAD_ADAPTER_PATH, listed_adapters
from roundhouse_operator.adapters import (
    AdapterCall,
    AdapterReport,
    adapter_statuses,
    adapters_condition_state,
    after_calls,
    engine_message,
    plan_calls,
    replica_urls,
    sync,
)
from roundhouse_operator.fit import Fit
from roundhouse_operator.plan import EnginePlan
from roundhouse_operator.status import Observed, engine_status
from tests.support.enginesim import State, make_app, shim
from tests.support.processes import free_port
from tests.support.simendpoints import Adapters
from tests.unit.test_adapters import TWO, make
from tests.unit.test_controller_passes import NS, controller, em, ie
from tests.unit.test_controller_passes import pod as engine_pod

NOW = datetime(2026, 12, 7, tzinfo=UTC)


WANTED = {"sql": "org/sql-lora", "chat": "/models/chat"}
R1, R2 = "http://10.0.0.1:8000", "http://10.0.0.2:8000"


def load(replica: str, name: str) -> tuple[str, str, str]:
    return (replica, LOAD_ADAPTER_PATH, name)


def unload(replica: str, name: str) -> tuple[str, str, str]:
    return (replica, UNLOAD_ADAPTER_PATH, name)


PLAN_TABLE: list[tuple[str, dict[str, str], dict[str, dict[str, str] | None], list[tuple[str, str, str]]]] = [
    ("new replica gets every adapter", WANTED, {R1: {}}, [load(R1, "chat"), load(R1, "sql")]),
    ("replica in step", WANTED, {R1: dict(WANTED)}, []),
    ("one of two replicas lacks one", WANTED, {R1: dict(WANTED), R2: {"sql": "org/sql-lora"}}, [load(R2, "chat")]),
    ("removed from the spec", {"sql": "org/sql-lora"}, {R1: dict(WANTED)}, [unload(R1, "chat")]),
    ("all removed", {}, {R1: dict(WANTED), R2: {}}, [unload(R1, "chat"), unload(R1, "sql")]),
    ("source changed: unload, then load", {"sql": "org/sql-v2"}, {R1: {"sql": "org/sql-lora"}},
     [unload(R1, "sql"), load(R1, "sql")]),
    ("trailing slash is the same source", {"chat": "/models/chat"}, {R1: {"chat": "/models/chat/"}}, []),
    ("listing without roots is trusted", {"sql": "org/sql-lora"}, {R1: {"sql": ""}}, []),
    ("unreadable replica left alone", WANTED, {R1: None, R2: {}}, [load(R2, "chat"), load(R2, "sql")]),
    ("no replicas", WANTED, {}, []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("wanted", "replicas", "expected"), [c[1:] for c in PLAN_TABLE], ids=[c[0] for c in PLAN_TABLE]
)
def test_plan_calls(
    wanted: dict[str, str], replicas: dict[str, dict[str, str] | None], expected: list[tuple[str, str, str]]
) -> None:
    calls = plan_calls(wanted, replicas)
    assert [(c.replica, c.path, c.adapter) for c in calls] == expected
    for c in calls:
        if c.path == LOAD_ADAPTER_PATH:
            assert c.body == {"lora_name": c.adapter, "lora_path": wanted[c.adapter]}
        else:
            assert c.body == {"lora_name": c.adapter}


def test_after_calls_applies_only_what_succeeded() -> None:
    done = [AdapterCall(R1, UNLOAD_ADAPTER_PATH, "old", {}), AdapterCall(R1, LOAD_ADAPTER_PATH, "sql", {})]
    assert after_calls({"old": "x", "chat": "/models/chat"}, done, WANTED) == {"chat", "sql"}


def test_vllm_models_listing_names_adapters_by_their_parent() -> None:
    body = json.dumps({"object": "list", "data": [
        {"id": "base", "root": "org/base", "parent": None},
        {"id": "sql", "root": "org/sql-lora", "parent": "base"},
    ]}).encode()  # fmt: skip
    assert listed_adapters(body) == {"sql": "org/sql-lora"}
    assert listed_adapters(b"not json") == {} and listed_adapters(b'{"data": 3}') == {}


def test_engine_message_takes_the_engines_own_words() -> None:
    body = json.dumps({"error": {"message": "Loading lora sql failed: No adapter found", "code": 400}})
    assert engine_message(400, body) == "HTTP 400: Loading lora sql failed: No adapter found"
    assert engine_message(404, '{"message": "not found"}') == "HTTP 404: not found"
    assert engine_message(500, "boom") == "HTTP 500: boom"


def pod(ip: str, ready: bool = True) -> dict[str, Any]:
    cond = {"type": "Ready", "status": "True" if ready else "False"}
    return {"metadata": {"name": ip}, "status": {"podIP": ip, "conditions": [cond]}}


def test_replicas_are_the_ready_pods_or_the_given_endpoints() -> None:
    ie = make(adapters=TWO)
    assert replica_urls(ie, [pod("10.0.0.2"), pod("10.0.0.1"), pod("10.0.0.3", ready=False)]) == [
        "http://10.0.0.1:8000",
        "http://10.0.0.2:8000",
    ]
    given = make(adapters=TWO, endpoints=["http://127.0.0.1:9000/"])
    assert replica_urls(given, [pod("10.0.0.1")]) == ["http://127.0.0.1:9000"]


# --- status ---------------------------------------------------------------------------------------

ADAPTERS = [Adapter(name="sql", source="org/sql-lora"), Adapter(name="chat", source="/models/chat")]


def test_command_line_adapters_are_on_every_ready_replica() -> None:
    statuses = adapter_statuses(ADAPTERS, 2, None, runtime=False)
    assert [(s.name, s.loaded_replicas, s.message) for s in statuses] == [("sql", 2, None), ("chat", 2, None)]
    assert adapters_condition_state(statuses, 2)[0] is True


def test_runtime_adapters_count_the_replicas_that_list_them_and_name_a_failure() -> None:
    report = AdapterReport(loaded={R1: {"sql", "chat"}, R2: {"sql"}},
                           errors={"chat": f"{R2}: HTTP 400: No adapter found for /models/chat"})  # fmt: skip
    statuses = adapter_statuses(ADAPTERS, 2, report, runtime=True)
    assert [(s.name, s.loaded_replicas) for s in statuses] == [("sql", 2), ("chat", 1)]
    ok, reason, message = adapters_condition_state(statuses, 2)
    assert (ok, reason) == (False, "LoadFailed")
    assert message.startswith("chat: ") and "No adapter found" in message


def test_adapters_still_loading_and_no_ready_replica() -> None:
    loading = adapter_statuses(ADAPTERS, 2, AdapterReport(loaded={R1: {"sql", "chat"}}), runtime=True)
    assert adapters_condition_state(loading, 2)[:2] == (False, "Loading")
    assert adapters_condition_state(adapter_statuses(ADAPTERS, 0, None, runtime=True), 0)[0] is None


def test_engine_status_reports_adapters_and_their_condition() -> None:
    ie = make(adapters=TWO)
    deployment = {"spec": {"replicas": 2}, "status": {"replicas": 2, "readyReplicas": 2}}
    report = AdapterReport(loaded={R1: {"sql"}, R2: {"sql"}}, errors={"chat": f"{R1}: HTTP 400: bad adapter"})
    plan = EnginePlan(replicas=2, active=True, held=False)
    observed = Observed(engine=ie, plan=plan, deployment=deployment, pods=[pod("10.0.0.1"), pod("10.0.0.2")],
                        fit=Fit(True, "Fits", ""), adapters=report)  # fmt: skip
    status = engine_status(observed, None, NOW)
    assert [(a.name, a.loaded_replicas, a.message) for a in status.adapters] == [
        ("sql", 2, None),
        ("chat", 0, f"{R1}: HTTP 400: bad adapter"),
    ]
    cond = next(c for c in status.conditions if c.type == "AdaptersLoaded")
    assert (cond.status, cond.reason) == ("False", "LoadFailed")
    assert "chat: " in cond.message and "bad adapter" in cond.message
    plain = engine_status(Observed(engine=make(), plan=EnginePlan(replicas=1, active=True, held=False), deployment=None,
                                   pods=[], fit=Fit(True, "Fits", "")), None, NOW)  # fmt: skip
    assert plain.adapters == [] and "AdaptersLoaded" not in {c.type for c in plain.conditions}


# --- the calls, against the simulator's vLLM flavour (vLLM 0.33.0's answers), in process ------------


async def _sync_against_sim(adapters: list[dict[str, Any]], preloaded: dict[str, str]) -> tuple[Any, Any]:
    state = State("vllm", "sim", ["m"], runtime_lora=True, adapters=Adapters("m", preloaded))
    runner = web.AppRunner(make_app(state))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(timeout=5) as http:
            report = await sync(http, make(adapters=adapters, endpoints=[url]), [url])
            listing = listed_adapters((await http.get(url + "/v1/models")).content)
        return report, (listing, state.adapters.calls if state.adapters else [])
    finally:
        await runner.cleanup()


def metric(call: str, result: str) -> float:
    return REGISTRY.get_sample_value("roundhouse_operator_adapter_calls_total", {"call": call, "result": result}) or 0


def test_sync_loads_unloads_and_reports_the_engines_refusal() -> None:
    wanted = [{"name": "sql", "source": "org/sql-lora"}, {"name": "bad", "source": "/models/missing-lora"},
              {"name": "moved", "source": "/models/new"}]  # fmt: skip
    report, (listing, calls) = asyncio.run(_sync_against_sim(wanted, {"old": "/models/old", "moved": "/models/was"}))
    assert listing == {"sql": "org/sql-lora", "moved": "/models/new"}
    assert calls == [("unload", "moved"), ("unload", "old"), ("load", "bad"), ("load", "moved"), ("load", "sql")]
    (url,) = report.loaded
    assert report.loaded[url] == {"sql", "moved"}
    assert list(report.errors) == ["bad"]
    assert (
        report.errors["bad"] == f"{url}: HTTP 404: Loading lora bad failed: No adapter found for /models/missing-lora"
    )
    assert metric("load", "refused") >= 1 and metric("unload", "ok") >= 2
    again, (_, calls) = asyncio.run(_sync_against_sim(wanted[:1], {"sql": "org/sql-lora"}))
    assert calls == [] and again.errors == {}


def test_the_simulators_vllm_shim_starts_with_the_rendered_lora_modules() -> None:
    argv = shim("vllm", ["serve", "org/m", "--served-model-name", "m", "--enable-lora",
                         "--lora-modules", "a=/p", "b=org/b", "--port", "8001"])  # fmt: skip
    assert isinstance(argv, list)
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--lora-module"] == ["a=/p", "b=org/b"]


# --- adapters on the command line that the engine could not load -----------------------------------

# What llama-server b11312 logged, exiting, for a --lora-scaled file it could not load (run here).
LLAMA_LOG = """0.00.007.310 E cmn  common_init_: failed to load lora adapter '/models/loras/sql.gguf'
0.00.007.311 E cmn  common_init_: failed to create context with model '/models/base.gguf'
0.00.007.754 E srv  llama_server: exiting due to model loading error"""


def crashed(log: str) -> dict[str, Any]:
    ended = {"terminated": {"exitCode": 1, "reason": "Error", "message": log}}
    status = {"containerStatuses": [{"name": "engine", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                                     "lastState": ended}]}  # fmt: skip
    return {"metadata": {"name": "p-0"}, "status": status}


def test_llamacpp_names_the_adapter_it_could_not_load() -> None:
    adapters = [{"name": "sql", "source": "loras/sql.gguf"}, {"name": "ok", "source": "loras/ok.gguf"}]
    ie = make(engine="llamacpp", model={"source": "/models/base.gguf", "servedName": "base"}, adapters=adapters)
    plan = EnginePlan(replicas=1, active=True, held=False)
    observed = Observed(engine=ie, plan=plan, deployment={"status": {"replicas": 1}}, pods=[crashed(LLAMA_LOG)],
                        fit=Fit(True, "Fits", ""))  # fmt: skip
    status = engine_status(observed, None, NOW)
    assert [(a.name, a.loaded_replicas, a.message) for a in status.adapters] == [
        ("sql", 0, "failed to load lora adapter '/models/loras/sql.gguf'"),
        ("ok", 0, None),
    ]
    cond = next(c for c in status.conditions if c.type == "AdaptersLoaded")
    assert (cond.status, cond.reason) == ("False", "LoadFailed") and cond.message.startswith("sql: ")


def test_vllm_names_the_lora_module_it_could_not_load() -> None:
    ie = make(adapters=TWO, vllm={"runtimeAdapterUpdates": False})
    log = "ValueError: Loading lora chat failed: No adapter found for /models/loras/chat\n"
    failed = FAMILIES[ie.spec.engine].failed_adapters(ie.spec, log)
    assert failed == {"chat": "Loading lora chat failed: No adapter found for /models/loras/chat"}
    assert FAMILIES[ie.spec.engine].failed_adapters(ie.spec, "Loading lora other failed: x") == {}


# --- the controller's pass: which engines it loads adapters on, and the status it writes --------------


def test_a_pass_loads_adapters_on_ready_pods_of_running_vllm_engines_only() -> None:
    calls: list[tuple[str, str]] = []
    listing = {"object": "list", "data": [{"id": "lora", "root": "org/m", "parent": None}]}

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append((request.method, str(request.url)))
        return httpx.Response(200, json=listing) if request.method == "GET" else httpx.Response(200, text="Success")

    running = ie("lora")
    running["spec"]["adapters"] = [{"name": "sql", "source": "org/sql-lora"}]
    switched_off = ie("off", "llamacpp")  # command-line adapters: nothing to call
    switched_off["spec"].update(model={"source": "/m/x.gguf", "servedName": "off"},
                                adapters=[{"name": "a", "source": "a.gguf"}])  # fmt: skip
    ready = engine_pod("lora")
    ready["status"].update(podIP="10.1.0.7", conditions=[{"type": "Ready", "status": "True"}])
    c, kube = controller(("InferenceEngine", running), ("InferenceEngine", switched_off), ("Pod", ready))
    c.http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    asyncio.run(c.reconcile(NS))
    assert calls == [("GET", "http://10.1.0.7:8000/v1/models"), ("POST", "http://10.1.0.7:8000/v1/load_lora_adapter")]

    deployment = c.store.get("Deployment", NS, "lora")
    assert deployment is not None
    c.store.put("Deployment", {**deployment, "status": {"replicas": 1, "readyReplicas": 1}})
    listing["data"].append({"id": "sql", "root": "org/sql-lora", "parent": "lora"})
    calls.clear()
    asyncio.run(c.reconcile(NS, {"lora"}))
    assert calls == [("GET", "http://10.1.0.7:8000/v1/models")]  # in step: nothing to load
    status = c.store.get("InferenceEngine", NS, "lora")["status"]  # type: ignore[index]
    assert status["adapters"] == [{"name": "sql", "loadedReplicas": 1}]
    assert next(x for x in status["conditions"] if x["type"] == "AdaptersLoaded")["status"] == "True"

    c.store.put("EngineMode", em("llamacpp"))  # the vLLM family switched off: no calls to its pods
    calls.clear()
    asyncio.run(c.reconcile(NS))
    assert calls == []
    assert kube.status_patched

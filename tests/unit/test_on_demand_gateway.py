"""The gateway's side of mode onDemand: which engine a request starts, the SSE prelude of a waiting
stream, the demand report's write triggers, and the local command lines of standalone engines."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import pytest

from roundhouse_api import Family, InferenceEngine, Mode
from roundhouse_api.demand import REPORT_FORGET, GatewayReport, drained, fold, forgotten, report_key
from roundhouse_gateway.engines.catalog import Catalog, Engine, ModeState, engine_from_resource
from roundhouse_gateway.engines.fleet import Fleet
from roundhouse_gateway.request.waiting import Prelude
from roundhouse_gateway.routing.demand import Demand
from roundhouse_gateway.routing.route import Features, route
from roundhouse_gateway.sources.localcmd import CommandError, local_command
from tests.support.manifests import engine as engine_doc


def eng(name: str, model: str = "m", ready: bool = False, **kw: Any) -> Engine:
    phase = kw.pop("phase", "Ready" if ready else "Standby")
    return Engine(name=name, family=kw.pop("family", Family.LLAMACPP), served=frozenset([model]),
                  endpoints=(f"http://{name}:1",) if ready else (), upstream_model=model, ready=ready, phase=phase,
                  **kw)  # fmt: skip


def on_demand(*engines: Engine) -> Catalog:
    return Catalog(engines, ModeState(mode=Mode.ON_DEMAND))


def decide(catalog: Catalog, f: Features | None = None) -> Any:
    return route(f or Features("m"), catalog, lambda ep: True, lambda ep: 0)


def test_a_running_engine_serves_and_nothing_is_activated() -> None:
    d = decide(on_demand(eng("up", ready=True), eng("down")))
    assert d.activate is None and [c.engine.name for c in d.candidates] == ["up"]


def test_with_nothing_running_the_highest_priority_engine_is_started() -> None:
    d = decide(on_demand(eng("low", priority=1), eng("high", priority=5)))
    assert d.activate == "high" and d.hold_for == Family.LLAMACPP and "activate:high" in d.reason


def test_a_long_prompt_starts_the_smallest_context_that_fits() -> None:
    variants = on_demand(eng("c8k", context_length=8192, priority=9), eng("c32k", context_length=32768),
                         eng("c128k", context_length=131072))  # fmt: skip
    assert decide(variants, Features("m", prompt_tokens=20000)).activate == "c32k"
    assert decide(variants, Features("m", prompt_tokens=100)).activate == "c8k"


def test_an_engine_being_drained_is_started_only_when_nothing_else_serves() -> None:
    assert decide(on_demand(eng("draining", phase="Draining", priority=9), eng("spare"))).activate == "spare"
    assert decide(on_demand(eng("draining", phase="Draining"))).activate == "draining"


def test_a_failed_engine_is_a_503_naming_why_not_a_wait() -> None:
    d = decide(on_demand(eng("bad", phase="Failed", message="its process exited with code 1: boom")))
    assert d.activate is None and d.error == (503, "engine_failed", "engine bad failed: its process exited with code"
                                              " 1: boom")  # fmt: skip


def test_other_modes_never_activate() -> None:
    d = route(Features("m"), Catalog((eng("down"),), ModeState(mode=Mode.AUTO)), lambda ep: True, lambda ep: 0)
    assert d.activate is None and d.error is not None


class Sink:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")


def test_a_waiting_stream_starts_at_once_with_comments_then_passes_the_stream_through() -> None:
    sink = Sink()
    prelude = Prelude(sink, {"X-Request-Id": "r"})

    async def go() -> None:
        await prelude.waiting("beta")
        await prelude.waiting("beta")  # within KEEPALIVE_SECONDS: nothing more
        await prelude.send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", b"text/event-stream")]})  # fmt: skip
        await prelude.send({"type": "http.response.body", "body": b"data: {}\n\ndata: [DONE]\n\n"})

    asyncio.run(go())
    starts = [m for m in sink.messages if m["type"] == "http.response.start"]
    assert len(starts) == 1 and starts[0]["status"] == 200
    assert (b"content-type", b"text/event-stream") in starts[0]["headers"]
    assert sink.body() == b": waiting for beta\n\ndata: {}\n\ndata: [DONE]\n\n"


def test_an_error_answer_after_the_prelude_becomes_an_error_event() -> None:
    sink = Sink()
    prelude = Prelude(sink, {})

    async def go() -> None:
        await prelude.waiting("beta")
        await prelude.send({"type": "http.response.start", "status": 400,
                            "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        body = json.dumps({"error": {"message": "bad", "type": "invalid_request_error", "code": "x"}}).encode()
        await prelude.send({"type": "http.response.body", "body": body})

    asyncio.run(go())
    text = sink.body().decode()
    assert text.endswith("data: [DONE]\n\n") and '"message": "bad"' in text and '"code": "x"' in text


def test_demand_is_written_once_per_activation_not_per_request() -> None:
    async def go() -> Demand:
        d = Demand()
        starts = [d.wait_begin("beta") for _ in range(50)]
        assert d.dirty.is_set()
        d.dirty.clear()
        for s in starts[:-1]:
            d.wait_end("beta", s, "served")
        assert not d.dirty.is_set()  # others still wait: nothing new to say
        d.wait_end("beta", starts[-1], "served")
        assert d.dirty.is_set()  # nobody waits any more: the demand is withdrawn
        return d

    d = asyncio.run(go())
    assert d.report().waiting == {}


def test_reports_fold_per_engine_and_expire() -> None:
    now = 1000.0
    a = GatewayReport(at=now - 1, waiting={"e": now - 5}, inFlight={"e": 2}, lastRequest={"e": now - 1})
    b = GatewayReport(at=now - 2, waiting={"e": now - 9}, inFlight={"e": 1}, lastRequest={"e": now - 3})
    old = GatewayReport(at=now - 100, waiting={"e": now - 200}, inFlight={"e": 7})
    annotations = {report_key("gw-a"): a.wire(), report_key("gw-b"): b.wire(), report_key("gone"): old.wire(),
                   report_key("junk"): "not json", "unrelated": "x"}  # fmt: skip
    folded, reports = fold(annotations, now)
    assert folded["e"].demanded_at == now - 9 and folded["e"].in_flight == 3 and folded["e"].last_request_at == now - 1
    assert len(reports) == 2
    assert not drained(reports, "e", now - 10)
    idle = [GatewayReport(at=now, inFlight={}), GatewayReport(at=now - 1, inFlight={"other": 1})]
    assert drained(idle, "e", now - 0.5)  # one gateway wrote after the drain began, none has it in flight
    assert not drained(idle[1:], "e", now - 0.5)  # nobody has written since: not known to be drained


def test_reports_of_gateways_gone_for_an_hour_are_forgotten_and_nothing_else() -> None:
    now = 100_000.0
    annotations = {report_key("me"): GatewayReport(at=now - 2 * REPORT_FORGET).wire(),  # mine: rewritten now
                   report_key("live"): GatewayReport(at=now - 5).wire(),
                   report_key("recent"): GatewayReport(at=now - REPORT_FORGET + 1).wire(),
                   report_key("gone"): GatewayReport(at=now - REPORT_FORGET - 1).wire(),
                   report_key("junk"): "not json", "kubectl.kubernetes.io/last-applied-configuration": ""}  # fmt: skip
    assert forgotten(annotations, now, keep=report_key("me")) == [report_key("gone"), report_key("junk")]


def test_report_keys_are_valid_annotation_names() -> None:
    assert report_key("Roundhouse-Gateway-7d9f_x.y") == "gateways.roundhouse.dev/roundhouse-gateway-7d9f-x-y"
    assert len(report_key("g" * 300).split("/", 1)[1]) == 63


def ie(**spec: Any) -> InferenceEngine:
    doc = engine_doc(**spec)
    doc["metadata"] = {"name": "e"}
    return InferenceEngine.model_validate(doc)


def test_the_rendered_llama_server_command_runs_on_loopback_with_the_chosen_port() -> None:
    e = ie(engine="llamacpp", model={"source": "/m/tiny.gguf", "servedName": "t"}, llamacpp={"contextSize": 512})
    cmd = local_command(e, 4321, "/cache", which=lambda p: f"/usr/local/bin/{p}")
    assert cmd.argv[0] == "/usr/local/bin/llama-server"
    args = cmd.argv[1:]
    assert args[args.index("--port") + 1] == "4321" and args[args.index("--host") + 1] == "127.0.0.1"
    assert args[args.index("--model") + 1] == "/m/tiny.gguf" and cmd.health_path == "/health"


def test_spec_process_overrides_the_command_line_without_a_shell() -> None:
    e = ie(
        engine="llamacpp",
        model={"source": "/m/t.gguf", "servedName": "t"},
        process={"command": ["/opt/llama-server", "--port", "{port}", "$(rm -rf /)"], "env": {"A": "1"}},
    )
    cmd = local_command(e, 99, "/cache", which=lambda p: None)
    assert cmd.argv == ["/opt/llama-server", "--port", "99", "$(rm -rf /)"] and cmd.env == {"A": "1"}


def test_a_binary_that_is_not_installed_is_named() -> None:
    e = ie(engine="llamacpp", model={"source": "/m/t.gguf", "servedName": "t"})
    with pytest.raises(CommandError, match="llama-server is not on PATH"):
        local_command(e, 1, "/cache", which=lambda p: None)


def test_ollama_listens_where_the_gateway_says() -> None:
    e = ie(engine="ollama", model={"source": "qwen2.5:7b", "servedName": "q"})
    cmd = local_command(e, 5555, "/cache", which=lambda p: "/bin/ollama")
    assert cmd.env["OLLAMA_HOST"] == "127.0.0.1:5555" and cmd.argv[:2] == ["/bin/ollama", "serve"]


def test_sglang_runs_from_path_with_its_key_expanded_as_the_kubelet_would(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("apiKey", "sk-local")  # the standalone gateway reads the same variable for its Bearer
    section = {"apiKeySecretRef": {"name": "s", "key": "apiKey"}, "extraArgs": ["--weight-version", "$$(x)"]}
    e = ie(engine="sglang", model={"source": "org/m", "servedName": "m"}, sglang=section)
    cmd = local_command(e, 7777, "/cache", which=lambda p: f"/opt/bin/{p}")
    args = cmd.argv[2:]
    assert cmd.argv[:2] == ["/opt/bin/sglang", "serve"] and cmd.health_path == "/ready"
    assert args[args.index("--port") + 1] == "7777" and args[args.index("--host") + 1] == "127.0.0.1"
    assert args[args.index("--api-key") + 1] == "sk-local" and cmd.env["SGLANG_API_KEY"] == "sk-local"
    assert args[-1] == "$(x)"  # $$ is a literal $, as in a pod


def test_a_reference_to_an_undefined_variable_is_left_as_written() -> None:
    from roundhouse_gateway.sources.localcmd import expand

    assert expand("$(A)-$(B)-$$(A)-$(not a name)", {"A": "1"}) == "1-$(B)-$(A)-$(not a name)"


def drive(steps: Any, answers: list[Any]) -> tuple[list[tuple[str, dict[str, Any]]], int | None]:
    """Run a family's count_tokens protocol against canned answers: the requests it made, its count."""
    asked = []
    try:
        req = next(steps)
        for answer in answers:
            asked.append(req)
            req = steps.send(answer)
    except StopIteration as done:
        return asked, done.value
    raise AssertionError(f"asked more than {len(answers)} requests: {asked}")


CHAT = {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": "f"}}]}


def test_vllm_counts_a_chat_with_its_template_and_tools_in_one_call() -> None:
    from roundhouse_api.families import FAMILIES

    asked, count = drive(FAMILIES[Family.VLLM].count_tokens(CHAT, "chat", "org/m"), [{"count": 17, "tokens": []}])
    assert asked == [("/tokenize", {"model": "org/m", "messages": CHAT["messages"], "add_generation_prompt": True,
                                    "tools": CHAT["tools"]})] and count == 17  # fmt: skip
    asked, count = drive(FAMILIES[Family.VLLM].count_tokens({"prompt": "abc"}, "completions", "m"), [{"count": 3}])
    assert asked == [("/tokenize", {"model": "m", "prompt": "abc"})] and count == 3


def test_sglang_counts_a_chat_as_it_renders_a_chat_completion() -> None:
    from roundhouse_api.families import FAMILIES

    # SGLang 0.5.23's /tokenize renders messages as for a chat completion when add_generation_prompt
    # is omitted (TokenizeRequest), and answers {"tokens", "count", "max_model_len"}.
    asked, count = drive(FAMILIES[Family.SGLANG].count_tokens(CHAT, "chat", "m"), [{"count": 12, "tokens": []}])
    assert asked == [("/tokenize", {"model": "m", "messages": CHAT["messages"], "tools": CHAT["tools"]})]
    assert count == 12
    assert (
        drive(FAMILIES[Family.SGLANG].count_tokens({"prompt": "abc"}, "completions", "m"), [{"error": "x"}])[1] is None
    )


def test_llama_server_renders_the_template_then_tokenizes() -> None:
    from roundhouse_api.families import FAMILIES

    steps = FAMILIES[Family.LLAMACPP].count_tokens(CHAT, "chat", "m")
    asked, count = drive(steps, [{"prompt": "<|user|>hi\n<|assistant|>"}, {"tokens": [1, 2, 3, 4]}])
    assert asked == [("/apply-template", {"messages": CHAT["messages"]}),
                     ("/tokenize", {"content": "<|user|>hi\n<|assistant|>", "add_special": True})]  # fmt: skip
    assert count == 4
    asked, count = drive(FAMILIES[Family.LLAMACPP].count_tokens(CHAT, "chat", "m"), [{"error": "no template"}])
    assert count is None  # an answer it cannot read: the estimate stands


def test_ollama_cannot_count() -> None:
    from roundhouse_api.families import FAMILIES

    assert drive(FAMILIES[Family.OLLAMA].count_tokens(CHAT, "chat", "m"), []) == ([], None)


def test_only_an_estimate_near_a_context_size_is_counted() -> None:
    from roundhouse_gateway.routing.tokens import near_a_limit

    variants = on_demand(eng("c8k", context_length=8192), eng("c32k", context_length=32768))
    assert near_a_limit(Features("m", prompt_tokens=7000), variants)
    assert near_a_limit(Features("m", prompt_tokens=30000), variants)
    assert not near_a_limit(Features("m", prompt_tokens=200), variants)
    assert not near_a_limit(Features("m", prompt_tokens=15000, max_tokens=1000), variants)  # far from both


def test_the_route_reason_says_which_count_decided() -> None:
    variants = on_demand(eng("c8k", context_length=8192, ready=True), eng("c32k", context_length=32768, ready=True))
    exact = decide(variants, Features("m", prompt_tokens=9000, tokens="exact", near_limit=True))
    assert [c.engine.name for c in exact.candidates] == ["c32k"] and "context:9000,tokens:exact" in exact.reason
    guess = decide(variants, Features("m", prompt_tokens=7000, near_limit=True))
    assert guess.candidates[0].engine.name == "c8k" and "tokens:estimate" in guess.reason


def test_models_list_standby_engines_with_their_phase_and_hide_switched_off_ones() -> None:
    from roundhouse_gateway.engines.models import model_list, model_object

    standby = on_demand(eng("b", model="beta"), eng("a", model="alpha", ready=True))
    listed = {m["id"]: m["roundhouse"]["engines"][0]["phase"] for m in model_list(standby)["data"]}
    assert listed == {"alpha": "Ready", "beta": "Standby"}  # standby models do not vanish
    assert model_object(standby, "beta")["object"] == "model"  # type: ignore[index]
    switched = Catalog((eng("o", model="llama", family=Family.OLLAMA, ready=True),), ModeState(mode=Mode.VLLM))
    assert model_object(switched, "llama") is None and model_list(switched)["data"] == []
    assert model_object(standby, "nothing") is None


def test_a_manual_switch_drains_until_every_gateway_has_seen_it_and_nothing_runs() -> None:
    from roundhouse_api.demand import switch_drained

    since = 1000.0
    idle_after = GatewayReport(at=since + 1, inFlight={})
    busy_after = GatewayReport(at=since + 1, inFlight={"old": 1, "other": 3})
    idle_before = GatewayReport(at=since - 1, inFlight={})  # it has not seen the switch: it may send there
    assert switch_drained([idle_after], ["old"], since)
    assert switch_drained([idle_after, GatewayReport(at=since + 2, inFlight={"other": 3})], ["old"], since)
    assert not switch_drained([busy_after], ["old"], since)
    assert not switch_drained([idle_after, idle_before], ["old"], since)
    assert not switch_drained([], ["old"], since)  # no gateway says anything: the deadline decides


def test_a_gateway_reports_again_when_the_operator_takes_a_switch_up() -> None:
    old = Engine(name="old", family=Family.VLLM, served=frozenset(["m"]), endpoints=("http://o",), upstream_model="m")
    new = Engine(name="new", family=Family.OLLAMA, served=frozenset(["m"]), endpoints=(), upstream_model="m")
    d = Demand()
    d.catalog_changed(Catalog((old, new), ModeState(mode=Mode.VLLM)))
    assert not d.dirty.is_set()
    # Patched: the gateway stops sending to the outgoing engine and says what it has in flight there.
    d.catalog_changed(Catalog((old, new), ModeState(mode=Mode.OLLAMA, switching=True)))
    assert d.dirty.is_set() and d.acked == {"old"}
    d.dirty.clear()
    # The operator's status names the switch's start: one more report, written after it.
    d.catalog_changed(Catalog((old, new), ModeState(mode=Mode.OLLAMA, switching=True, switch_started_at=5.0)))
    assert d.dirty.is_set()
    d.dirty.clear()
    d.catalog_changed(Catalog((old, new), ModeState(mode=Mode.OLLAMA, switching=True, switch_started_at=5.0)))
    assert not d.dirty.is_set()
    # The last request on the outgoing engine ending is reported too.
    d.request_begin("old")
    d.request_end("old")
    assert d.dirty.is_set()


def test_replicas_a_scale_down_stops_are_out_of_routing_and_reported_until_their_last_request_ends() -> None:
    """status.stopping takes a replica out of the endpoints (and of those starting), and the gateway says
    how many of its requests still run there: at once when it sees the stop, again when the last ends."""
    stop = {"pod": "e-2", "address": "10.0.0.2", "since": "2026-12-07T12:00:00Z"}
    doc = {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine", "metadata": {"name": "e"},
           "spec": {"engine": "vllm", "model": {"source": "org/m", "servedName": "m"}},
           "status": {"stopping": [stop]}}  # fmt: skip
    a, b = "http://10.0.0.1:8000", "http://10.0.0.2:8000"
    engine = engine_from_resource(InferenceEngine.model_validate(doc), [a, b], starting=[b])
    assert engine.endpoints == ("http://10.0.0.1:8000",) and engine.starting == ()
    assert engine.stopping == ("http://10.0.0.2:8000",)

    async def go() -> None:
        outstanding: Counter[str] = Counter({"http://10.0.0.2:8000": 2, "http://10.0.0.1:8000": 5})
        d = Demand(outstanding=outstanding)
        d.catalog_changed(Catalog((engine,)))
        assert d.dirty.is_set() and d.report().stopping == {"e": 2}
        d.dirty.clear()
        d.reported_stopping = {"e"}
        d.catalog_changed(Catalog((engine,)))
        assert not d.dirty.is_set()  # the same stop: nothing new to say
        for _ in range(2):
            d.request_begin("e")
        outstanding["http://10.0.0.2:8000"] -= 1
        d.request_end("e")
        assert not d.dirty.is_set()  # one still runs there
        outstanding["http://10.0.0.2:8000"] -= 1
        d.request_end("e")
        assert d.dirty.is_set() and d.report().stopping == {}

    asyncio.run(go())


def test_the_report_carries_what_autoscaled_engines_say_they_hold_and_stays_due_while_they_do() -> None:
    """Requests sent to an autoscaled engine around the gateway: its replicas' own count goes in the report
    (fresh readings only), and the report is due every interval while it is above 0, once more after."""
    fleet = Fleet(Catalog((Engine("auto", Family.VLLM, frozenset({"m"}), ("http://a:1", "http://b:1"), "m",
                                  autoscaled=True),
                           Engine("fixed", Family.VLLM, frozenset({"n"}), ("http://c:1",), "n"))))  # fmt: skip
    fleet.engine_load.record("http://a:1", 5, 0)
    fleet.engine_load.record("http://b:1", 2, 1)
    fleet.engine_load.record("http://c:1", 9, 0)  # not autoscaled: not reported
    assert fleet.engine_held() == {"auto": 7}
    d = Demand(engine_held=fleet.engine_held)
    assert d.busy() and d.report().engine_load == {"auto": 7}
    fleet.engine_load.record("http://a:1", 0, 0)
    fleet.engine_load.record("http://b:1", 0, 0)
    d.reported_held = {"auto"}  # the last report said it held some
    assert d.busy() and d.report().engine_load == {"auto": 0}
    d.reported_held = set()
    assert not d.busy()
    fleet.engine_load.held["http://a:1"] = (3, 0.0)  # a reading from long ago
    fleet.engine_load.held["http://b:1"] = (3, 0.0)
    assert fleet.engine_held() == {}


def test_a_burst_on_an_autoscaled_engine_is_reported_at_once_each_replica_s_worth() -> None:
    """Not only every REPORT_INTERVAL: the operator hears of a burst when the gateway's load on an
    autoscaled engine asks for another replica (targetRequestsPerReplica 4 here), one write per step."""

    async def go() -> list[GatewayReport]:
        written: list[GatewayReport] = []

        async def write(r: GatewayReport) -> None:
            written.append(r)

        d = Demand(write, interval=3600)
        d.catalog_changed(on_demand(eng("auto", ready=True, scale_step=4), eng("fixed", model="n", ready=True)))
        task = asyncio.create_task(d.run())
        for _ in range(4):
            d.request_begin("auto")
        for _ in range(20):
            d.request_begin("fixed")  # not autoscaled: its load is said at the interval
        await asyncio.sleep(0.05)
        assert written == []  # one replica's worth
        d.request_begin("auto")
        await asyncio.sleep(0.05)
        for _ in range(3):
            d.request_begin("auto")
        await asyncio.sleep(0.05)
        assert [r.in_flight["auto"] for r in written] == [5]  # 8 asks for two replicas too: said already
        d.request_begin("auto")
        await asyncio.sleep(0.05)
        task.cancel()
        return written

    assert [r.in_flight["auto"] for r in asyncio.run(go())] == [5, 9]


def test_the_step_is_the_engines_target_requests_per_replica() -> None:
    doc = engine_doc(autoscaling={"maxReplicas": 4, "targetRequestsPerReplica": 6})
    assert engine_from_resource(InferenceEngine.model_validate(doc), []).scale_step == 6
    assert engine_from_resource(InferenceEngine.model_validate(engine_doc()), []).scale_step == 0

"""The gateway as a pure ASGI app: OpenAI API in front, engines behind.

HTTP handlers only translate: parse once, ask routing.route(), forward bytes. No framework
middleware sits on the streaming path (Starlette's BaseHTTPMiddleware cost LiteLLM half its CPU).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.metadata
import logging
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from roundhouse_api import Mode
from roundhouse_api.families import FAMILIES

from . import admin as admin_api
from . import metrics, models, openapi, shapes, tokens, ui
from .auth import Auth
from .catalog import Catalog, Engine, switch_finished
from .demand import Demand, Waiter
from .drain import Drain
from .health import Health, probe_ok, probe_path
from .keys import Identity
from .load import EngineLoad
from .routing import Candidate, Decision, Features, route
from .upstream import Response, Upstream, UpstreamError
from .usage import CALL, Call
from .waiting import Prelude, error_event
from .wire import (
    ClientError,
    Receive,
    Scope,
    Send,
    cancel_on_disconnect,
    error_body,
    header,
    last_usage_event,
    next_request_id,
    parse_request,
    read_body,
    respond,
    respond_json,
    stream_ended,
    stream_error,
    strip_usage,
    usage_of,
    with_headers,
    with_model,
)

log = logging.getLogger("roundhouse.gateway")
# Every endpoint proxied to the engines, by the request shape that validates it.
COMPLETION_PATHS = {k.path: name for name, k in shapes.KINDS.items()}
HOT_KINDS = frozenset({"chat", "completions"})  # bodies every family takes as they are
RETRYABLE = {500, 502, 503, 504}
MAX_ATTEMPTS = 4


@dataclass
class Settings:
    api_keys: list[str] = field(default_factory=list)
    admin_keys: list[str] = field(default_factory=list)
    max_body_bytes: int = 4 * 1024 * 1024
    probe_interval: float = 2.0
    retry_after_seconds: int = 5


@dataclass
class EngineStats:
    ttft: deque[float] = field(default_factory=lambda: deque(maxlen=200))
    tokens: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=500))

    def ttft_p50(self) -> float | None:
        return sorted(self.ttft)[len(self.ttft) // 2] if self.ttft else None

    def tokens_per_second(self, window: float = 60.0) -> float:
        now = time.monotonic()
        return round(sum(n for t, n in self.tokens if now - t <= window) / window, 3)


def package_version() -> str:
    try:
        return importlib.metadata.version("roundhouse")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


ModeSetter = Callable[[Mode], Awaitable[dict[str, Any]]]


class Gateway:
    def __init__(self, settings: Settings, catalog: Catalog | None = None, set_mode: ModeSetter | None = None) -> None:
        self.settings = settings
        self.catalog = catalog or Catalog()
        self.synced = catalog is not None
        self.health = Health()
        self.outstanding: dict[str, int] = defaultdict(int)
        self.stats: dict[str, EngineStats] = defaultdict(EngineStats)
        self.changed = asyncio.Event()
        self.slot_freed = asyncio.Event()
        self.upstream = Upstream()
        self.set_mode = set_mode
        self.on_startup: list[Callable[[], None]] = []
        self.on_shutdown: list[Callable[[], Awaitable[None]]] = []
        self.standalone = True
        self.turn = 0
        self._tasks: list[asyncio.Task[None]] = []
        self.demand = Demand()  # mode onDemand: cluster mode gives it a writer
        self.engine_load = EngineLoad()
        self.drain = Drain()
        self.auth = Auth.from_keys(settings.api_keys, settings.admin_keys)  # main() gives it the key files
        self.openapi = openapi.document(package_version())
        # Cluster mode: since when the view of engines and mode is the last one seen (None: current).
        self.stale_since: Callable[[], float | None] = lambda: None

    # --- catalog updates (from the config file or the cluster watchers) -----------------------
    def update(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.synced = True
        self.health.forget_except({ep for e in catalog.engines for ep in e.endpoints})
        self.demand.catalog_changed(catalog)
        self.notify()

    def notify(self) -> None:
        """Wake requests waiting for the catalog or health to change (held during a switch)."""
        self.changed.set()
        self.changed = asyncio.Event()

    # --- lifespan ---------------------------------------------------------------------------
    async def startup(self) -> None:
        self._tasks.append(asyncio.create_task(self.probe_forever(), name="probes"))
        self._tasks.append(asyncio.create_task(self.demand.run(), name="demand-reports"))
        self._tasks.append(asyncio.create_task(self.auth.watch(), name="key-files"))
        self._tasks.append(asyncio.create_task(self.engine_load.run(lambda: self.catalog, self.upstream),
                                               name="engine-load"))  # fmt: skip
        for hook in self.on_startup:
            hook()

    def background(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run `coro` until the gateway shuts down."""
        self._tasks.append(asyncio.create_task(coro, name=name))

    async def shutdown(self) -> None:
        for t in self._tasks:
            t.cancel()
        for hook in self.on_shutdown:
            await hook()
        await self.upstream.close()

    async def probe_forever(self) -> None:
        while True:
            await self.probe_all()
            await asyncio.sleep(self.settings.probe_interval)

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(e, ep) for e in self.catalog.engines for ep in e.endpoints))
        if self.standalone_switch_done():
            self.update(switch_finished(self.catalog, time.time()))

    def standalone_switch_done(self) -> bool:
        """Standalone, nothing reports a switch's end: it ends when the new family answers its probes."""
        mode = self.catalog.mode
        if not (self.standalone and mode.switching):
            return False
        incoming = [ep for e in self.catalog.engines if mode.active(e) and e.governed for ep in e.endpoints]
        return any(self.health.healthy(ep) for ep in incoming)

    async def probe(self, engine: Engine, endpoint: str) -> None:
        headers = [("Authorization", f"Bearer {engine.api_key}")] if engine.api_key else []
        try:
            async with asyncio.timeout(engine.timeouts.connect + 2):
                r = await self.upstream.request("GET", endpoint, probe_path(engine), b"", headers,
                                                engine.timeouts.connect, engine.timeouts.connect + 2)  # fmt: skip
                try:
                    ok, why = probe_ok(engine, r.status, await r.read())
                finally:
                    r.release()
        except (UpstreamError, TimeoutError) as err:
            ok, why = False, f"unreachable: {type(err).__name__}"
        was = self.health.healthy(endpoint)
        self.health.probed(endpoint, ok, why)
        metrics.child(metrics.HEALTHY, engine.name, endpoint).set(1 if self.health.healthy(endpoint) else 0)
        if was != self.health.healthy(endpoint):
            log.info("endpoint health", extra={"engine": engine.name, "endpoint": endpoint, "healthy": ok, "why": why})
            self.notify()

    # --- ASGI ---------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        rid = header(scope, b"x-request-id") or next_request_id()
        started = streaming = False

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started, streaming
            if message["type"] == "http.response.start":
                started = True
                streaming = any(k == b"content-type" and b"event-stream" in v for k, v in message["headers"])
                if self.drain.draining:  # clients reconnect, to a replica that is not going away
                    message = {**message, "headers": [*message["headers"], (b"connection", b"close")]}
            await send(message)

        task = asyncio.current_task()
        assert task is not None
        self.drain.tasks.add(task)
        try:
            await self.dispatch(scope, receive, tracked, rid)
        except asyncio.CancelledError:
            if not self.drain.expired:
                raise
            task.uncancel()  # the drain deadline: answer in OpenAI's shape rather than drop the connection
            message = "the gateway is shutting down; retry the request"
            if not started:
                await respond(send, 503, error_body(message, "service_unavailable", "shutting_down"),
                              {"X-Request-Id": rid, "Retry-After": "1", "Connection": "close"})  # fmt: skip
            else:
                tail = error_event(message, "service_unavailable", "shutting_down") if streaming else b""
                await send({"type": "http.response.body", "body": tail, "more_body": False})
        except ClientError as err:
            await respond(send, err.status, error_body(err.message, err.type, err.code, err.param),
                          {"X-Request-Id": rid, **err.headers})  # fmt: skip
        except Exception:
            # A bug of ours, never the client's: logged once with the request id, answered in OpenAI's shape.
            log.exception("unexpected error", extra={"request_id": rid, "path": scope.get("path")})
            if not started:
                body = error_body(f"internal error (request id {rid})", "server_error", "internal_error")
                await respond(send, 500, body, {"X-Request-Id": rid})
        finally:
            self.drain.tasks.discard(task)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def dispatch(self, scope: Scope, receive: Receive, send: Send, rid: str) -> None:
        path, method = scope["path"], scope["method"]
        if path in COMPLETION_PATHS:
            if method != "POST":
                raise ClientError(405, f"{path} accepts POST", "method_not_allowed")
            await self.completion(scope, receive, send, rid, COMPLETION_PATHS[path], self.auth.client(scope))
        elif path == "/v1/models" and method == "GET":
            self.auth.client(scope)
            await respond_json(send, 200, models.model_list(self.catalog))
        elif path.startswith("/v1/models/") and method == "GET":
            self.auth.client(scope)
            model_id = path[len("/v1/models/") :]
            model = models.model_object(self.catalog, model_id)
            if model is None:
                raise ClientError(404, models.not_found(model_id), "model_not_found", "model")
            await respond_json(send, 200, model)
        elif path == "/openapi.json" and method == "GET":
            await respond_json(send, 200, self.openapi)
        elif path == "/healthz":
            await respond_json(send, 200, {"status": "ok"})
        elif path == "/readyz":
            ready = self.synced and not self.drain.draining
            await respond_json(send, 200 if ready else 503, {"ready": ready, "draining": self.drain.draining})
        elif path == "/metrics":
            await respond(send, 200, generate_latest(metrics.REGISTRY), {"Content-Type": CONTENT_TYPE_LATEST})
        elif path.startswith("/admin/"):
            self.auth.admin(scope)
            await self.admin(scope, receive, send, path, method)
        elif path in ("/", "/ui"):
            # Relative asset and API URLs need the trailing slash (and keep working behind a path prefix).
            await respond(send, 308, b"", {"Location": f"{scope.get('root_path', '')}/ui/"})
        elif path.startswith("/ui/"):
            found = ui.asset(path[len("/ui/") :])
            if found is None:
                raise ClientError(404, f"Unknown path {path}", "not_found")
            if method != "GET":
                raise ClientError(405, f"{path} accepts GET", "method_not_allowed")
            await respond(send, 200, found[0], found[1])
        else:
            raise ClientError(404, f"Unknown path {path}", "not_found")

    # --- completions ----------------------------------------------------------------------------
    async def completion(self, scope: Scope, receive: Receive, send: Send, rid: str, kind: str,
                         who: Identity) -> None:  # fmt: skip
        started = time.perf_counter()
        call = Call(key=who.name)
        CALL.set(call)
        try:
            raw = await read_body(receive, self.settings.max_body_bytes)
            body, features, rewritten = parse_request(raw, kind, scope)
            call.model = features.model
            features, body, rewritten, send = self.admit(who, call, body, features, rewritten, send)
            # One watcher task cancels this one if the client leaves, which stops the upstream request
            # too (a second task for the proxying and asyncio.wait cost ~10 us a request).
            handler = asyncio.current_task()
            assert handler is not None
            left = asyncio.Event()
            watcher = asyncio.create_task(cancel_on_disconnect(receive, handler, left))
            try:
                await self.answer(send, rid, body, raw if not rewritten else None, features, scope["path"], started)
            except asyncio.CancelledError:
                if not left.is_set():
                    raise
                handler.uncancel()
                call.status = call.status or 499  # the client closed the request
                log.info("client disconnected", extra={"request_id": rid, "model": features.model})
            finally:
                watcher.cancel()
        except ClientError as err:
            call.status = err.status
            raise
        finally:
            if self.auth.enabled:
                self.account(who, call)

    def admit(self, who: Identity, call: Call, body: dict[str, Any], f: Features, rewritten: bool, send: Send
              ) -> tuple[Features, dict[str, Any], bool, Send]:  # fmt: skip
        """The key's models, engines and limits: 404 for a model it may not use (OpenAI's answer),
        429 over a limit; streams are asked for their usage, which the client then does not see."""
        if not who.may_use_model(f.model):
            raise ClientError(404, models.not_found(f.model), "model_not_found", "model")
        if who.engines:
            f = dataclasses.replace(f, engines=who.engines)
        verdict = self.auth.limiter.admit(who, time.monotonic(), time.time())
        if verdict.refusal is not None:
            r = verdict.refusal
            metrics.child(metrics.RATE_LIMITED, who.name, r.type).inc()
            raise ClientError(429, r.message, r.code, None, r.type,
                              {"Retry-After": str(max(1, r.retry_after)), **verdict.headers})  # fmt: skip
        if f.stream and self.auth.enabled and f.kind in ("chat", "completions"):
            options = body.get("stream_options") or {}
            if options.get("include_usage") is not True:
                body = {**body, "stream_options": {**options, "include_usage": True}}
                rewritten, call.strip_usage = True, True
        if verdict.headers:
            send = with_headers(send, verdict.headers)
        return f, body, rewritten, send

    def account(self, who: Identity, call: Call) -> None:
        """Count what a request used against its key: usage rows, metrics, token limits."""
        model = call.model if any(call.model in e.served for e in self.catalog.engines) else ""
        wall = time.time()
        self.auth.usage.record(who.name, model, call.engine, call.status or 499, call.prompt_tokens,
                               call.completion_tokens, wall)  # fmt: skip
        self.auth.limiter.spend(who, call.prompt_tokens + call.completion_tokens, time.monotonic(), wall)

    async def answer(self, send: Send, rid: str, body: dict[str, Any], raw: bytes | None, features: Features,
                     path: str, started: float) -> None:  # fmt: skip
        """Route (waiting for an engine to start if need be), then forward, or answer the error."""
        prelude = Prelude(send, {"X-Request-Id": rid}) if features.stream else None
        features = await tokens.exact(features, body, self.catalog, self.health, self.upstream)
        decision = await self.decide(features, prelude.waiting if prelude else None)
        if decision.error:
            status, code, message = decision.error
            headers = {"X-Request-Id": rid, "X-Roundhouse-Route-Reason": decision.reason or code}
            if status == 503:
                headers["Retry-After"] = str(decision.retry_after or self.settings.retry_after_seconds)
            # An unknown model is the client's string: it must not become a new metric series per typo.
            model_label = "" if code == "model_not_found" else features.model
            if (call := CALL.get()) is not None:
                call.status = status
            metrics.child(metrics.REQUESTS, model_label, "", "", str(status)).inc()
            log.info("request", extra={"request_id": rid, "model": features.model, "status": status, "reason": code})
            if prelude is not None and prelude.started:
                await prelude.fail(message, "service_unavailable", code)
                return
            param = "model" if code in ("model_not_found", "unsupported_endpoint") else None
            kind = "invalid_request_error" if status < 500 else "service_unavailable"
            raise ClientError(status, message, code, param, kind, headers)
        for part in decision.reason.split(","):
            metrics.child(metrics.DECISIONS, part.split(":", 1)[0]).inc()
        await self.forward(prelude.send if prelude else send, rid, body, raw, features, decision, path, started)

    async def decide(self, f: Features, waiting: Callable[[str], Awaitable[None]] | None = None) -> Decision:
        """Route; wait for an engine started on demand (bounded, `waiting` called meanwhile), hold while
        the mode switches (bounded), queue briefly when every endpoint is at its cap."""
        policy = self.catalog.mode.policy
        hold_deadline = time.monotonic() + policy.max_hold_seconds
        queue_deadline = time.monotonic() + self.catalog.mode.rules.queue_timeout_seconds
        waiter: Waiter | None = None
        outcome = "gave-up"
        try:
            while True:
                self.turn += 1
                d = route(f, self.catalog, self.health.healthy, self.load_of, self.turn)
                if d.activate is not None:
                    if waiter is None or waiter.engine != d.activate:
                        if waiter is not None:
                            waiter.end("rerouted")
                        waiter = Waiter(self.demand, d.activate, self.catalog.mode.on_demand.max_wait_seconds)
                    if waiter.expired():
                        outcome = "timeout"
                        return waiter.timed_out(d.reason)
                    if waiting is not None:
                        await waiting(d.activate)
                    await self.wait_change(waiter.deadline)
                    continue
                outcome = "served" if d.candidates else "error"
                if waiter is not None and d.candidates:
                    # Say that this request waited for its engine to start (and how long).
                    waited = time.time() - waiter.started
                    d = dataclasses.replace(d, reason=f"{d.reason},activated:{waiter.engine}:{waited:.2f}s")
                if d.hold_for is not None:
                    if time.monotonic() >= hold_deadline:
                        why = f"the {d.hold_for.value} engines are still starting after a mode switch"
                        return Decision(error=(503, "engine_switching", why), reason="hold:timeout")
                    await self.wait_change(hold_deadline)
                    continue
                if d.candidates and all(self.at_cap(c) for c in d.candidates):
                    if time.monotonic() >= queue_deadline:
                        return Decision(error=(503, "engine_overloaded", "every engine for this model is at its"
                                               " concurrency limit"), reason="concurrency-cap")  # fmt: skip
                    self.slot_freed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.slot_freed.wait(), max(0.0, queue_deadline - time.monotonic()))
                    continue
                return d
        finally:
            if waiter is not None:
                waiter.end(outcome)

    async def wait_change(self, deadline: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.changed.wait(), min(1.0, max(0.0, deadline - time.monotonic())))

    def load_of(self, endpoint: str) -> float:
        """What routing weighs an endpoint by: this gateway's requests there, or what the engine says it
        holds if that is more (fresh readings only, when the mode's rules use them)."""
        if self.catalog.mode.rules.engine_load:
            return max(self.outstanding[endpoint], self.engine_load.held(endpoint))
        return self.outstanding[endpoint]

    def at_cap(self, c: Candidate) -> bool:
        return c.engine.max_concurrency is not None and self.outstanding[c.endpoint] >= c.engine.max_concurrency

    async def forward(self, send: Send, rid: str, body: dict[str, Any], raw: bytes | None, f: Features,
                      d: Decision, path: str, started: float) -> None:  # fmt: skip
        last_error = "no candidate"
        reason = d.reason
        for attempt, cand in enumerate(d.candidates[:MAX_ATTEMPTS]):
            engine = cand.engine
            if attempt and not self.health.healthy(cand.endpoint):
                continue
            try:
                payload = self.payload(body, raw, f, engine)
            except ValueError as err:
                raise ClientError(400, f"engine {engine.name}: {err}", "unsupported_request") from None
            headers = [("Content-Type", "application/json"), ("X-Request-Id", rid)]
            if engine.api_key:
                headers.append(("Authorization", f"Bearer {engine.api_key}"))
            self.health.attempt(cand.endpoint)
            self.outstanding[cand.endpoint] += 1
            metrics.child(metrics.IN_FLIGHT, engine.name).inc()
            self.demand.request_begin(engine.name)
            try:
                sent = await self.try_one(send, rid, cand, payload, headers, f, path, started, reason)
            finally:
                self.demand.request_end(engine.name)
                self.outstanding[cand.endpoint] -= 1
                metrics.child(metrics.IN_FLIGHT, engine.name).dec()
                self.slot_freed.set()
            if sent is True:
                return
            last_error = str(sent)
            metrics.child(metrics.FAILOVERS, engine.name, last_error.split(":", 1)[0]).inc()
            reason = f"{d.reason},failover"
            log.warning("failover", extra={"request_id": rid, "engine": engine.name, "endpoint": cand.endpoint,
                                           "error": last_error})  # fmt: skip
        metrics.child(metrics.REQUESTS, f.model, "", "", "503").inc()
        if (call := CALL.get()) is not None:
            call.status = 503
        await respond(send, 503, error_body(f"no engine could serve the request ({last_error})", "service_unavailable",
                                            "no_healthy_engine"),
                      {"Retry-After": str(self.settings.retry_after_seconds), "X-Request-Id": rid,
                       "X-Roundhouse-Route-Reason": reason})  # fmt: skip

    @staticmethod
    def payload(body: dict[str, Any], raw: bytes | None, f: Features, engine: Engine) -> bytes:
        """The bytes to send `engine`: the client's own when nothing changes, else the body with the
        engine's model name, in the shape its family takes at that path."""
        if f.kind not in HOT_KINDS:
            body = FAMILIES[engine.family].request_body(f.path, body)
            raw = None
        return raw if raw is not None and engine.upstream_model == f.model else with_model(body, engine)

    async def try_one(self, send: Send, rid: str, cand: Candidate, payload: bytes, headers: list[tuple[str, str]],
                      f: Features, path: str, started: float, reason: str) -> bool | str:  # fmt: skip
        """Forward to one endpoint. True once the answer went to the client; else why it failed
        (nothing has reached the client yet, so the caller may try the next candidate)."""
        engine, t = cand.engine, cand.engine.timeouts
        sent_at = time.perf_counter()
        try:
            resp = await self.upstream.request("POST", cand.endpoint, path, payload, headers, t.connect, t.first_byte)
        except (UpstreamError, TimeoutError) as err:
            self.health.failure(cand.endpoint, type(err).__name__)
            return f"connect:{type(err).__name__}"
        try:
            metrics.child(metrics.UPSTREAM, engine.name).observe(time.perf_counter() - sent_at)
            if resp.status in RETRYABLE:
                self.health.failure(cand.endpoint, f"HTTP {resp.status}")
                try:
                    async with asyncio.timeout(t.connect):  # only for the log line: never wait long
                        detail = (await resp.read())[:200].decode(errors="replace")
                except (UpstreamError, TimeoutError) as err:
                    detail = f"(body unreadable: {type(err).__name__})"
                return f"status:{resp.status} {detail}"
            out_headers = {
                "Content-Type": resp.headers.get("content-type", "application/json"),
                "X-Request-Id": rid,
                "X-Roundhouse-Engine": engine.name,
                "X-Roundhouse-Route-Reason": reason,
            }
            streaming = "text/event-stream" in out_headers["Content-Type"]
            if not streaming:
                # Small bodies: read it all first, so a failure mid-body can still fail over.
                try:
                    async with asyncio.timeout(t.first_byte):
                        data = await resp.read()
                except (UpstreamError, TimeoutError) as err:
                    self.health.failure(cand.endpoint, type(err).__name__)
                    return f"read:{type(err).__name__}"
                self.first_token(engine, started)
                if resp.status < 400:
                    self.health.success(cand.endpoint)
                    self.count_usage(engine, data)
                await respond(send, resp.status, data, out_headers)
                self.finish(f, engine, resp.status, started, cand, rid, reason)
                return True
            return await self.stream(send, resp, out_headers, engine, cand, f, started, rid, reason)
        finally:
            resp.release()

    async def stream(self, send: Send, resp: Response, headers: dict[str, str], engine: Engine,
                     cand: Candidate, f: Features, started: float, rid: str, reason: str) -> bool | str:  # fmt: skip
        idle = engine.timeouts.idle
        try:
            async with asyncio.timeout(engine.timeouts.first_byte):
                first = await resp.read_chunk()
        except (UpstreamError, TimeoutError) as err:
            self.health.failure(cand.endpoint, type(err).__name__)
            return f"read:{type(err).__name__}"
        if not first:
            self.health.failure(cand.endpoint, "empty stream")
            return "read:empty stream"
        self.first_token(engine, started)
        call = CALL.get()
        strip = call is not None and call.strip_usage
        pending, usage_chunk = b"", b""
        tail = first[-256:]
        if strip:
            first, pending, dropped = strip_usage(b"", first)
            usage_chunk = dropped or b""
        elif b'"usage"' in first:
            usage_chunk = first
        await send({"type": "http.response.start", "status": resp.status,
                    "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]})  # fmt: skip
        await send({"type": "http.response.body", "body": first, "more_body": True})
        ended_cleanly = stream_ended(f.kind, first, first)
        loop = asyncio.get_running_loop()
        try:
            # One deadline per stream, moved at most once a second: asyncio.wait_for around every
            # read costs a task per chunk.
            async with asyncio.timeout(idle) as deadline:
                while True:
                    chunk = await resp.read_chunk()
                    if not chunk:
                        break
                    now = loop.time()
                    if now + idle - (deadline.when() or now) > 1.0:
                        deadline.reschedule(now + idle)
                    tail = (tail + chunk)[-256:]
                    ended_cleanly = ended_cleanly or stream_ended(f.kind, tail, chunk)
                    if strip:
                        chunk, pending, dropped = strip_usage(pending, chunk)
                        usage_chunk = dropped or usage_chunk
                    elif b'"usage"' in chunk:
                        usage_chunk = chunk
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (UpstreamError, TimeoutError) as err:
            ended_cleanly = False
            self.health.failure(cand.endpoint, type(err).__name__)
            log.warning("stream broken", extra={"request_id": rid, "engine": engine.name, "error": type(err).__name__})
        if not ended_cleanly:
            # After the first byte there is no failover: end the stream the way OpenAI clients expect.
            event = stream_error(f.kind, f"engine {engine.name} stopped mid-stream")
            await send({"type": "http.response.body", "body": event, "more_body": False})
            self.finish(f, engine, 502, started, cand, rid, reason)
            return True
        self.health.success(cand.endpoint)
        await send({"type": "http.response.body", "body": pending, "more_body": False})
        if usage_chunk:
            self.count_usage(engine, usage_chunk if strip else last_usage_event(usage_chunk))
        self.finish(f, engine, resp.status, started, cand, rid, reason)
        return True

    def first_token(self, engine: Engine, started: float) -> None:
        ttft = time.perf_counter() - started
        metrics.child(metrics.TTFT, engine.name).observe(ttft)
        self.stats[engine.name].ttft.append(ttft)

    def count_usage(self, engine: Engine, data: bytes) -> None:
        prompt, completion = usage_of(data)
        if (call := CALL.get()) is not None:
            call.prompt_tokens, call.completion_tokens = prompt, completion
        metrics.child(metrics.TOKENS, engine.name, "prompt").inc(prompt)
        metrics.child(metrics.TOKENS, engine.name, "completion").inc(completion)
        self.stats[engine.name].tokens.append((time.monotonic(), completion))

    def finish(self, f: Features, engine: Engine, status: int, started: float, cand: Candidate, rid: str,
               reason: str) -> None:  # fmt: skip
        elapsed = time.perf_counter() - started
        if (call := CALL.get()) is not None:
            call.engine, call.status = engine.name, status
        metrics.child(metrics.REQUESTS, f.model, engine.name, engine.family.value, str(status)).inc()
        metrics.child(metrics.DURATION, engine.family.value).observe(elapsed)
        log.info("request", extra={"request_id": rid, "model": f.model, "engine": engine.name,
                                   "endpoint": cand.endpoint, "status": status, "reason": reason,
                                   "stream": f.stream, "duration_ms": round(elapsed * 1000, 2)})  # fmt: skip

    # --- admin: its own module ---------------------------------------------------------------------
    async def admin(self, scope: Scope, receive: Receive, send: Send, path: str, method: str) -> None:
        await admin_api.handle(self, receive, send, path, method, scope.get("query_string", b""))

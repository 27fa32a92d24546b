"""The gateway as a pure ASGI app: OpenAI API in front, engines behind.

HTTP handlers only translate: parse once, ask routing.route(), forward bytes. No framework
middleware sits on the streaming path (Starlette's BaseHTTPMiddleware cost LiteLLM half its CPU).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import time
from collections import Counter, defaultdict, deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from roundhouse_api import Mode

from . import admin as admin_api
from . import metrics, models, openapi, shapes, ui
from .auth import Auth
from .budget import BudgetState, History
from .catalog import Catalog, Engine, switch_finished
from .demand import Demand
from .drain import Drain
from .early import EARLY_PROBE_SECONDS, still_starting, to_probe, with_early
from .health import Health, probe_ok, probe_path
from .load import EngineLoad
from .serving import Serving
from .upstream import Upstream, UpstreamError
from .usage import CALL
from .waiting import error_event
from .wire import (
    ClientError,
    Receive,
    Scope,
    Send,
    error_body,
    header,
    next_request_id,
    respond,
    respond_json,
)

log = logging.getLogger("roundhouse.gateway")
# Every endpoint proxied to the engines, by the request shape that validates it.
COMPLETION_PATHS = {k.path: name for name, k in shapes.KINDS.items()}


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
BudgetReader = Callable[[float], Awaitable[tuple[BudgetState | None, History]]]


class Gateway(Serving):
    def __init__(self, settings: Settings, catalog: Catalog | None = None, set_mode: ModeSetter | None = None) -> None:
        self.settings = settings
        self.catalog = catalog or Catalog()
        self.source = self.catalog  # as the config or the cluster says; self.catalog adds early replicas
        self.early: set[str] = set()  # starting replicas that answered the gateway's probe (early.py)
        self.waiting_for: Counter[str] = Counter()  # requests waiting for each engine to start
        self._early_probes: dict[str, asyncio.Task[None]] = {}
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
        self.openapi = openapi.serialized(package_version())  # GET /openapi.json: built once
        # Cluster mode: since when the view of engines and mode is the last one seen (None: current).
        self.stale_since: Callable[[], float | None] = lambda: None
        # Mode onDemand: who holds the GPUs, for the admin page's Budget view (None: no budget here).
        self.budget: BudgetReader | None = None

    # --- catalog updates (from the config file or the cluster watchers) -----------------------
    def update(self, catalog: Catalog) -> None:
        self.source = catalog
        self.early = still_starting(catalog, self.early)
        self.catalog = with_early(catalog, self.early)
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
        self._tasks.append(asyncio.create_task(self.engine_load.run(lambda: self.catalog, self.upstream,
                                                                    self.outstanding),
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

    def wait_for(self, engines: set[str], delta: int) -> None:
        """A request starts (+1) or stops (-1) waiting for `engines`; while any waits, their starting
        replicas are probed every EARLY_PROBE_SECONDS and routed to once one answers."""
        for name in engines:
            self.waiting_for[name] += delta
            if self.waiting_for[name] > 0 and name not in self._early_probes:
                self._early_probes[name] = asyncio.create_task(self._probe_starting(name), name=f"early-{name}")
        self.waiting_for = +self.waiting_for  # drop the zeros

    async def _probe_starting(self, name: str) -> None:
        try:
            while self.waiting_for[name] > 0:
                for engine, endpoint in to_probe(self.source, {name}, self.early):
                    ok, _ = await self.check(engine, endpoint)
                    if ok and still_starting(self.source, {endpoint}):  # it may have gone meanwhile
                        self.early.add(endpoint)
                        self.catalog = with_early(self.source, self.early)
                        self.health.probed(endpoint, True)
                        log.info("starting replica answers", extra={"engine": name, "endpoint": endpoint})
                        self.notify()
                await asyncio.sleep(EARLY_PROBE_SECONDS)
        finally:
            self._early_probes.pop(name, None)

    async def check(self, engine: Engine, endpoint: str) -> tuple[bool, str]:
        """One active probe of `endpoint`, judged the way the engine's family means it."""
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
        return ok, why

    async def probe(self, engine: Engine, endpoint: str) -> None:
        ok, why = await self.check(engine, endpoint)
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
                extra = call.headers if (call := CALL.get()) is not None else None
                if extra:  # a limited key's x-ratelimit-* headers, on every answer it gets
                    message = {**message, "headers": [*message["headers"], *extra]}
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
            await respond(send, 200, self.openapi, {"Content-Type": "application/json"})
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

    # --- admin: its own module ---------------------------------------------------------------------
    async def admin(self, scope: Scope, receive: Receive, send: Send, path: str, method: str) -> None:
        await admin_api.handle(self, receive, send, path, method, scope.get("query_string", b""))

"""The gateway as a pure ASGI app: OpenAI API in front, engines behind.

HTTP handlers only translate: parse once, ask routing.route(), forward bytes. No framework
middleware sits on the streaming path (Starlette's BaseHTTPMiddleware cost LiteLLM half its CPU).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from roundhouse_gateway import metrics
from roundhouse_gateway.admin import api as admin_api
from roundhouse_gateway.admin import ui
from roundhouse_gateway.admin.api import BudgetReader, ModeSetter
from roundhouse_gateway.compare.window import Comparison
from roundhouse_gateway.engines import models
from roundhouse_gateway.engines.catalog import Catalog
from roundhouse_gateway.engines.fleet import Fleet
from roundhouse_gateway.engines.probes import Prober
from roundhouse_gateway.engines.upstream import Upstream
from roundhouse_gateway.http.drain import Drain
from roundhouse_gateway.http.server import ON_START, Headers
from roundhouse_gateway.http.wire import (
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
from roundhouse_gateway.keys.auth import Auth
from roundhouse_gateway.keys.usage import CALL
from roundhouse_gateway.request import openapi, shapes
from roundhouse_gateway.request.decide import Decider
from roundhouse_gateway.request.forward import Forwarder
from roundhouse_gateway.request.pipeline import Completions
from roundhouse_gateway.request.shadow import Shadower
from roundhouse_gateway.request.waiting import error_event
from roundhouse_gateway.routing.demand import Demand
from roundhouse_gateway.settings import Settings

log = logging.getLogger("roundhouse.gateway")
# Every endpoint proxied to the engines, by the request shape that validates it.
COMPLETION_PATHS = {k.path: name for name, k in shapes.KINDS.items()}


def package_version() -> str:
    try:
        return importlib.metadata.version("roundhouse")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


class Gateway:
    """The ASGI app: composes the engines' live view, the probes and the request stages; answers the
    paths that are not a request to an engine itself."""

    def __init__(self, settings: Settings, catalog: Catalog | None = None, set_mode: ModeSetter | None = None,
                 auth: Auth | None = None, standalone: bool = True) -> None:  # fmt: skip
        self.settings = settings
        self.fleet = Fleet(catalog)
        self.upstream = Upstream()
        self.prober = Prober(self.fleet, self.upstream, settings.probe_interval, standalone)
        # Cluster mode gives it a writer.
        self.demand = Demand(outstanding=self.fleet.outstanding, engine_held=self.fleet.engine_held)
        self.fleet.on_update.append(self.demand.catalog_changed)
        self.set_mode = set_mode
        self.on_startup: list[Callable[[], None]] = []
        self.on_shutdown: list[Callable[[], Awaitable[None]]] = []
        self.standalone = standalone
        self._tasks: list[asyncio.Task[None]] = []
        self.drain = Drain()
        self.auth = auth or Auth.from_keys(settings.api_keys, settings.admin_keys)
        self.forwarder = Forwarder(self.fleet, self.upstream, self.demand, settings.retry_after_seconds)
        decider = Decider(self.fleet, self.demand, self.prober, self.upstream)
        self.comparison = Comparison()
        shadower = Shadower(self.fleet, self.upstream, self.comparison)
        self.completions = Completions(self.fleet, self.auth, decider, self.forwarder, shadower,
                                       settings.max_body_bytes, settings.retry_after_seconds)  # fmt: skip
        self.openapi = openapi.serialized(package_version())  # GET /openapi.json: built once
        # Cluster mode: since when the view of engines and mode is the last one seen (None: current).
        self.stale_since: Callable[[], float | None] = lambda: None
        # Mode onDemand: who holds the GPUs, for the admin page's Budget view (None: no budget here).
        self.budget: BudgetReader | None = None

    @property
    def catalog(self) -> Catalog:
        """The catalog requests are routed on now."""
        return self.fleet.catalog

    def update(self, catalog: Catalog) -> None:
        """A new catalog from the config file or the cluster watchers."""
        self.fleet.update(catalog)

    # --- lifespan ---------------------------------------------------------------------------
    async def startup(self) -> None:
        fleet = self.fleet
        self.background(self.prober.run(), "probes")
        self.background(self.demand.run(), "demand-reports")
        self.background(self.auth.watch(), "key-files")
        self.background(fleet.engine_load.run(lambda: fleet.catalog, self.upstream, fleet.outstanding), "engine-load")
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

    # --- ASGI ---------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        rid = header(scope, b"x-request-id") or next_request_id()
        start: list[Headers] = []  # the response's headers, once it has started

        def starting(headers: Headers) -> Headers:
            start.append(headers)
            extra = call.headers if (call := CALL.get()) is not None else None
            if extra:  # a limited key's x-ratelimit-* headers, on every answer it gets
                headers = [*headers, *extra]
            if self.drain.draining:  # clients reconnect, to a replica that is not going away
                headers = [*headers, (b"connection", b"close")]
            return headers

        extensions = scope.get("extensions") or {}
        hook: Callable[[Callable[[Headers], Headers] | None], None] | None = extensions.get(ON_START)
        if hook is not None:  # our server runs `starting` on the headers
            hook(starting)
            answer = send
        else:  # another server: a wrapper does

            async def answer(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    message = {**message, "headers": starting(message.get("headers") or [])}
                await send(message)

        task = asyncio.current_task()
        assert task is not None
        self.drain.tasks.add(task)
        try:
            await self.dispatch(scope, receive, answer, rid, task)
        except asyncio.CancelledError:
            if hook is not None:  # what follows is answered as it is (as it always was)
                hook(None)
            if not self.drain.expired:
                raise
            task.uncancel()  # the drain deadline: answer in OpenAI's shape rather than drop the connection
            message = "the gateway is shutting down; retry the request"
            if not start:
                await respond(send, 503, error_body(message, "service_unavailable", "shutting_down"),
                              {"X-Request-Id": rid, "Retry-After": "1", "Connection": "close"})  # fmt: skip
            else:
                streaming = any(k == b"content-type" and b"event-stream" in v for k, v in start[0])
                tail = error_event(message, "service_unavailable", "shutting_down") if streaming else b""
                await send({"type": "http.response.body", "body": tail, "more_body": False})
        except ClientError as err:
            if hook is not None:
                hook(None)
            await respond(send, err.status, error_body(err.message, err.type, err.code, err.param),
                          {"X-Request-Id": rid, **err.headers})  # fmt: skip
        except Exception:
            # A bug of ours, never the client's: logged once with the request id, answered in OpenAI's shape.
            log.exception("unexpected error", extra={"request_id": rid, "path": scope.get("path")})
            if hook is not None:
                hook(None)
            if not start:
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

    async def dispatch(self, scope: Scope, receive: Receive, send: Send, rid: str, task: asyncio.Task[Any]) -> None:
        path, method = scope["path"], scope["method"]
        if path in COMPLETION_PATHS:
            if method != "POST":
                raise ClientError(405, f"{path} accepts POST", "method_not_allowed")
            await self.completions(scope, receive, send, rid, COMPLETION_PATHS[path], self.auth.client(scope), task)
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
            ready = self.fleet.synced and not self.drain.draining
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

"""Running the server, and graceful shutdown: on SIGTERM the gateway reports not ready at once, keeps
accepting for DELAY seconds (Service endpoints and load balancers still send a terminating pod new
connections for a few seconds), then stops accepting; requests in flight get until DEADLINE seconds
after the signal, when streams still running end with an OpenAI error event and `[DONE]` and other
requests are answered 503. A second signal exits at once."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

import uvloop

from roundhouse_gateway.http.server import ASGI, App, HttpServer

log = logging.getLogger("roundhouse.gateway")
DELAY, DEADLINE = 5.0, 25.0
GRACE = 5.0  # after the deadline: for the answers the deadline forced to go out


class Drain:
    """What the request handlers need to know about a shutdown under way."""

    def __init__(self) -> None:
        self.since: float | None = None  # monotonic time of the signal
        self.expired = False
        self.tasks: set[asyncio.Task[Any]] = set()  # requests in flight

    @property
    def draining(self) -> bool:
        return self.since is not None

    def begin(self) -> None:
        self.since = time.monotonic()
        log.info("draining", extra={"inFlight": len(self.tasks)})

    def expire(self) -> None:
        """The deadline: every request still in flight is cancelled; the handlers answer for it."""
        self.expired = True
        if self.tasks:
            log.warning("drain deadline: ending requests in flight", extra={"inFlight": len(self.tasks)})
        for task in list(self.tasks):
            task.cancel()


class Lifespan:
    """The app's ASGI lifespan: startup before the server listens, shutdown after it has drained."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.done: dict[str, asyncio.Event] = {"startup": asyncio.Event(), "shutdown": asyncio.Event()}
        self.task: asyncio.Task[None] | None = None

    async def _send(self, message: dict[str, Any]) -> None:
        phase = message["type"].removeprefix("lifespan.").split(".")[0]
        if message["type"].endswith(".failed"):
            raise RuntimeError(f"the app's {phase} failed: {message.get('message', '')}")
        self.done[phase].set()

    async def _phase(self, phase: str) -> None:
        await self.inbox.put({"type": f"lifespan.{phase}"})
        assert self.task is not None
        waiting = asyncio.ensure_future(self.done[phase].wait())
        await asyncio.wait({waiting, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if not self.done[phase].is_set():
            waiting.cancel()
            self.task.result()  # the app's own error
            raise RuntimeError(f"the app ended during its lifespan {phase}")

    async def startup(self) -> None:
        self.task = asyncio.ensure_future(self.app({"type": "lifespan", "asgi": ASGI}, self.inbox.get, self._send))
        await self._phase("startup")

    async def shutdown(self) -> None:
        await self._phase("shutdown")


def serve(app: App, host: str, port: int, drain: Drain, delay: float = DELAY, deadline: float = DEADLINE) -> None:
    """Serve `app` on host:port until a signal, draining as the module says."""
    uvloop.run(_serve(app, host, port, drain, delay, max(deadline, delay)))


async def _serve(app: App, host: str, port: int, drain: Drain, delay: float, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    server = HttpServer(app, host, port)
    stop, force = asyncio.Event(), asyncio.Event()

    def stop_accepting() -> None:
        log.info("drain: no new connections", extra={"inFlight": len(drain.tasks)})
        stop.set()

    def on_signal() -> None:
        if drain.draining:  # a second signal: stop now
            force.set()
            stop.set()
            return
        drain.begin()
        loop.call_later(delay, stop_accepting)
        loop.call_later(deadline, drain.expire)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    lifespan = Lifespan(app)
    await lifespan.startup()
    await server.start()
    await stop.wait()
    server.stop_accepting()
    server.shutdown_connections()  # idle ones close now, busy ones after their response
    if not force.is_set():
        waited = asyncio.ensure_future(server.wait_closed(deadline - delay + GRACE))
        forced = asyncio.ensure_future(force.wait())
        await asyncio.wait({waited, forced}, return_when=asyncio.FIRST_COMPLETED)
        forced.cancel()
        waited.cancel()
    for conn in list(server.connections):
        conn.close()
    if not force.is_set():
        await lifespan.shutdown()
    log.info("stopped")

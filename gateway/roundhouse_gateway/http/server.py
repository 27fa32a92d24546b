"""The gateway's HTTP/1.1 server: one asyncio protocol per connection over httptools' request parser
(llhttp), calling the ASGI app with the standard messages.

Why not uvicorn: its ASGI layer was a quarter of the gateway's CPU per proxied request (checking
every header it writes, per-request flow-control and timer objects, scope keys nobody reads;
docs/benchmarks.md). This server keeps what the gateway needs and no more: keep-alive with an idle
timeout, pipelined requests answered in order, `Expect: 100-continue`, request bodies read as the app
asks for them (reading pauses past HIGH_WATER), responses written with their head and first body in
one write (Content-Length when the body comes whole, chunked otherwise), back-pressure from slow
clients, disconnects reported to the app, and a bounded request head (431). Parsing stays with a
well-kept library; the headers it writes come from the gateway itself.
"""

from __future__ import annotations

import asyncio
import http
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import httptools

from roundhouse_gateway.http.wire import error_body

log = logging.getLogger("roundhouse.gateway.http")
App = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], Awaitable[None]]],
               Awaitable[None]]  # fmt: skip
MAX_HEAD = 64 * 1024  # request line and headers; more is refused with 431
HIGH_WATER = 64 * 1024  # request body bytes buffered before the connection stops reading
KEEP_ALIVE = 75.0  # seconds an idle connection is kept (longer than common load balancers' 60 s)
ASGI = {"version": "3.0", "spec_version": "2.3"}
STATUS = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in http.HTTPStatus}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
DISCONNECT = {"type": "http.disconnect"}
# A scope extension: the app gives a callable to run if the client goes away while its request is
# answered (None takes it back), instead of a task per request waiting on receive() for the disconnect.
ON_DISCONNECT = "roundhouse.on_disconnect"
# Another: the app gives a function the response's headers go through when it starts (None takes it back),
# instead of wrapping send, which costs a frame on every message of a stream.
ON_START = "roundhouse.on_response_start"
Headers = list[tuple[bytes, bytes]]


class HeadTooLarge(Exception):
    """The request line and headers exceed MAX_HEAD."""


def simple_response(status: int, message: str) -> bytes:
    """A whole response with a JSON error body in OpenAI's shape, closing the connection."""
    body = error_body(message, "invalid_request_error")
    return (STATUS[status] + b"content-type: application/json\r\nconnection: close\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)  # fmt: skip


class Cycle:
    """One request and its response on a connection."""

    __slots__ = ("body", "buffered", "chunked", "conn", "continue_sent", "disconnected", "done", "expect_continue",
                 "head", "head_only", "keep_alive", "left", "more_body", "read_done", "response_complete", "scope",
                 "started", "starting", "waiter")  # fmt: skip

    def __init__(self, conn: Connection, scope: dict[str, Any], keep_alive: bool, expect_continue: bool) -> None:
        self.conn, self.scope, self.keep_alive = conn, scope, keep_alive
        self.expect_continue, self.continue_sent = expect_continue, False
        self.head_only = scope["method"] == "HEAD"
        self.body: list[bytes] = []
        self.buffered = 0
        self.more_body = True  # the request body has not all arrived
        self.read_done = False  # the app has been given the whole body
        self.disconnected = False
        self.started = False  # http.response.start came
        self.head: tuple[int, list[tuple[bytes, bytes]]] | None = None  # the response's, until written
        self.chunked = False
        self.response_complete = False
        self.done = False  # the connection is done with this cycle
        self.waiter: asyncio.Future[None] | None = None
        self.left: Callable[[], None] | None = None  # what the app asked to be run on a disconnect
        self.starting: Callable[[Headers], Headers] | None = None  # what the app asked the headers go through
        scope["extensions"] = {ON_DISCONNECT: self.on_disconnect, ON_START: self.on_start}

    def on_disconnect(self, callback: Callable[[], None] | None) -> None:
        self.left = callback

    def on_start(self, callback: Callable[[Headers], Headers] | None) -> None:
        self.starting = callback

    def lost(self) -> None:
        """The connection is gone."""
        self.disconnected = True
        self.wake()
        if self.left is not None and not self.response_complete:
            left, self.left = self.left, None
            left()

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def wait(self) -> None:
        self.waiter = self.conn.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    async def run(self, app: App) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except Exception:  # the app answers its own errors: this is a bug of ours
            log.exception("unhandled error in the app", extra={"path": self.scope.get("path")})
            if not self.started and not self.disconnected:
                self.conn.write(simple_response(500, "internal error"))
        finally:
            if not self.response_complete:  # the app ended without a whole response: nothing can follow it
                self.keep_alive = False
                self.conn.cycle_done(self)

    async def receive(self) -> dict[str, Any]:
        """The request body as it arrives; then, once the response is complete or the client has gone,
        a disconnect."""
        while not self.read_done:
            if self.body:
                body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
                self.body.clear()
                self.buffered = 0
                self.read_done = not self.more_body
                return {"type": "http.request", "body": body, "more_body": self.more_body}
            if not self.more_body or self.disconnected or self.response_complete:
                self.read_done = True
                if self.disconnected:
                    return DISCONNECT
                return {"type": "http.request", "body": b"", "more_body": False}
            if self.expect_continue and not self.continue_sent:
                self.continue_sent = True
                self.conn.write(CONTINUE)
            self.conn.resume_reading()
            await self.wait()
        while not self.disconnected and not self.response_complete:
            await self.wait()
        return DISCONNECT

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("the response has started already")
            self.started = True
            headers = message.get("headers") or []
            self.head = (message["status"], headers if self.starting is None else self.starting(headers))
            return
        if kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        if not self.started or self.response_complete:
            raise RuntimeError("http.response.body outside a response")
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        conn = self.conn
        out = self._head(len(body), more) if self.head is not None else b""
        if not self.head_only:
            if self.chunked:
                out += (b"%x\r\n%b\r\n" % (len(body), body) if body else b"") + (b"" if more else b"0\r\n\r\n")
            else:
                out += body
        if out and not self.disconnected:
            conn.write(out)
        if not more:
            self.response_complete = True
            self.wake()
            conn.cycle_done(self)
        elif conn.write_paused and not self.disconnected:
            await conn.drained()

    def _head(self, length: int, more: bool) -> bytes:
        assert self.head is not None
        status, headers = self.head
        self.head = None
        parts = [STATUS.get(status) or b"HTTP/1.1 %d \r\n" % status]
        framed = False
        for name, value in headers:
            lower = name.lower()
            if lower == b"content-length" or lower == b"transfer-encoding":
                framed = True
            elif lower == b"connection" and value.lower() == b"close":
                self.keep_alive = False
            parts += (name, b": ", value, b"\r\n")
        if not framed and status >= 200 and status not in (204, 304):
            if more:
                self.chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
            else:
                parts += (b"content-length: ", b"%d" % length, b"\r\n")
        if self.keep_alive and self.conn.closing:
            self.keep_alive = False
            parts.append(b"connection: close\r\n")
        elif not self.keep_alive and not any(n.lower() == b"connection" for n, _ in headers):
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)


class Connection(asyncio.Protocol):
    """One client connection: parses its requests, runs a Cycle per request, in order."""

    def __init__(self, server: HttpServer) -> None:
        self.server, self.app, self.loop = server, server.app, server.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client: tuple[str, int] | None = None
        self.local: tuple[str, int] | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_size = 0
        self.parsing: Cycle | None = None  # the request whose body is arriving
        self.current: Cycle | None = None  # the request being answered
        self.queue: deque[Cycle] = deque()  # pipelined requests waiting for their turn
        self.read_paused = False
        self.write_paused = False
        self.closing = False  # no new request on this connection (the server drains, or the client said so)
        self._drained: asyncio.Future[None] | None = None
        self._idle: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.client = _address(transport.get_extra_info("peername"))
        self.local = _address(transport.get_extra_info("sockname"))
        self.server.connections.add(self)
        self._idle = self.loop.call_later(KEEP_ALIVE, self.close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.closing = True
        if self._idle is not None:
            self._idle.cancel()
        for cycle in (self.current, self.parsing, *self.queue):
            if cycle is not None:
                cycle.lost()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # no upgrades here: the request is answered as an ordinary one
        except httptools.HttpParserError as err:
            too_large = isinstance(err.__context__, HeadTooLarge)
            self.write(simple_response(431 if too_large else 400, "request header fields too large" if too_large
                                       else "invalid HTTP request"))  # fmt: skip
            self.close()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # --- httptools callbacks ----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.url, self.headers, self.head_size = b"", [], 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_size += len(url)
        if self.head_size > MAX_HEAD:
            raise HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value) + 4
        if self.head_size > MAX_HEAD:
            raise HeadTooLarge
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser, url = self.parser, self.url
        raw_path, _, query = url.partition(b"?")
        if not raw_path.startswith(b"/"):  # absolute form: http://host/path
            parsed = httptools.parse_url(url)
            raw_path, query = parsed.path or b"/", parsed.query or b""
        path = raw_path.decode("latin-1")
        scope = {
            "type": "http", "asgi": ASGI, "http_version": parser.get_http_version(), "scheme": "http",
            "method": parser.get_method().decode("ascii"), "path": unquote(path) if "%" in path else path,
            "raw_path": raw_path, "query_string": query, "root_path": "", "headers": self.headers,
            "client": self.client, "server": self.local,
        }  # fmt: skip
        expect = any(n == b"expect" and v.lower() == b"100-continue" for n, v in self.headers)
        cycle = Cycle(self, scope, parser.should_keep_alive() and not self.closing, expect)
        self.parsing = cycle
        if self.current is None:
            self.start(cycle)
        else:
            self.queue.append(cycle)
            self.pause_reading()  # one request ahead at most: the rest wait in the socket

    def on_body(self, body: bytes) -> None:
        cycle = self.parsing
        if cycle is None or cycle.response_complete or cycle.disconnected:
            return  # the app answered without reading it all: the rest is dropped
        cycle.body.append(body)
        cycle.buffered += len(body)
        if cycle.buffered > HIGH_WATER:
            self.pause_reading()
        cycle.wake()

    def on_message_complete(self) -> None:
        cycle = self.parsing
        if cycle is not None:
            cycle.more_body = False
            cycle.wake()
        self.parsing = None

    # --- used by the cycles -------------------------------------------------------------------------
    def start(self, cycle: Cycle) -> None:
        self.current = cycle
        self.loop.create_task(cycle.run(self.app))

    def cycle_done(self, cycle: Cycle) -> None:
        """`cycle`'s response is complete (or will never be): close, or go on to the next request."""
        if cycle.done:
            return
        cycle.done = True
        if self.current is not cycle:
            return
        self.current = None
        if not cycle.keep_alive or self.closing or self.transport is None or self.transport.is_closing():
            self.close()
            return
        self.resume_reading()
        if self.queue:
            self.start(self.queue.popleft())
        elif self.parsing is None:
            self._idle = self.loop.call_later(KEEP_ALIVE, self.close)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def drained(self) -> None:
        """Until the client has taken what was written (a slow client holds its own request only)."""
        self._drained = self.loop.create_future()
        try:
            await self._drained
        finally:
            self._drained = None

    def pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def shutdown(self) -> None:
        """The server stops: close now if idle, else after the response in progress."""
        self.closing = True
        if self.current is None:
            self.close()


def _address(info: Any) -> tuple[str, int] | None:
    return (str(info[0]), int(info[1])) if isinstance(info, tuple) and len(info) >= 2 else None


class HttpServer:
    """Listens on one address and serves `app` on every connection."""

    def __init__(self, app: App, host: str, port: int) -> None:
        self.app, self.host, self.port = app, host, port
        self.connections: set[Connection] = set()
        self.loop: asyncio.AbstractEventLoop
        self.listener: asyncio.Server | None = None

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.listener = await self.loop.create_server(lambda: Connection(self), self.host, self.port, backlog=2048,
                                                      reuse_address=True)  # fmt: skip
        log.info("listening", extra={"host": self.host, "port": self.port})

    def stop_accepting(self) -> None:
        if self.listener is not None:
            self.listener.close()

    def shutdown_connections(self) -> None:
        for conn in list(self.connections):
            conn.shutdown()

    async def wait_closed(self, timeout: float) -> None:
        """Until every connection has closed, `timeout` seconds at most."""
        deadline = self.loop.time() + timeout
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.close()

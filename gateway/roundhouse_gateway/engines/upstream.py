"""The gateway's HTTP/1.1 client to the engines: keep-alive pool, streamed bodies, httptools' parser.

Why not aiohttp's client: on the gateway's one core its request path (request objects, header
multidicts, timers, stream readers) was the largest cost per proxied request in the profile
(docs/benchmarks.md). The gateway needs little of it: POST/GET to a known origin, bytes back.
Parsing stays with a well-kept library (httptools, llhttp — the parser uvicorn uses); this module
only keeps connections and hands bytes over.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

HIGH_WATER = 256 * 1024  # buffered body bytes before we stop reading from the engine
IDLE_SECONDS = 30.0  # a pooled connection unused this long is closed instead of reused


class UpstreamError(Exception):
    """The engine could not be reached, or broke the response."""


class ConnectError(UpstreamError):
    """No connection could be opened (refused, unreachable, TLS failed)."""


class ReadError(UpstreamError):
    """The connection closed or sent something that is not HTTP before the response was whole."""


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int
    prefix: str  # the endpoint's own path, put before every request path
    host_header: bytes


@functools.lru_cache(maxsize=1024)
def origin_of(endpoint: str) -> Origin:
    """Split an endpoint URL (http[s]://host[:port][/prefix]) once; endpoints are few."""
    u = urlsplit(endpoint)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError(f"endpoint must be an http:// or https:// URL, got {endpoint!r}")
    default = 443 if u.scheme == "https" else 80
    port = u.port or default
    host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
    return Origin(u.scheme, u.hostname, port, u.path.rstrip("/"),
                  (host if port == default else f"{host}:{port}").encode("idna"))  # fmt: skip


class _Connection(asyncio.Protocol):
    """One TCP connection; parses the response to the request in flight."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.idle_since = 0.0
        self.lost = False
        # One timer per request, re-armed by moving `deadline` (it fires, then re-schedules itself if the
        # deadline moved): asyncio.timeout() around each wait cost two objects and a timer each.
        self.deadline: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.keep_alive = False
        self.until_close = False  # no length, not chunked: the body ends when the connection does
        self.complete = False
        self.received = False
        self.error: UpstreamError | TimeoutError | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.paused = False
        self.head: asyncio.Future[None] | None = None
        self.waiter: asyncio.Future[None] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        if self.head is None or self.complete:
            # Bytes while no request is in flight (a server's 408 before it closes an idle
            # connection, say) would be taken for the next request's answer: drop the connection.
            self.close()
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as err:
            self._fail(ReadError(f"malformed response: {err}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.disarm()
        if self.head is not None and self.head.done() and self.until_close and not self.complete:
            self.complete = True
            self._wake()
        elif not self.complete:
            self._fail(ReadError("the engine closed the connection" + (f": {exc}" if exc else "")))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        no_body = self.status in (204, 304) or 100 <= self.status < 200
        framed = "content-length" in self.headers or "chunked" in self.headers.get("transfer-encoding", "")
        self.until_close = not (no_body or framed)
        if self.head is not None and not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self.disarm()
        self._wake()

    # the request's deadline
    def arm(self, seconds: float | None) -> None:
        """Fail what waits on this response with TimeoutError `seconds` from now (None: never)."""
        if seconds is None or self.complete:
            self.disarm()
            return
        loop = asyncio.get_running_loop()
        self.deadline = deadline = loop.time() + seconds
        if self.timer is not None and self.timer_at > deadline:  # earlier than the timer: set it again
            self.timer.cancel()
            self.timer = None
        if self.timer is None:
            self.timer, self.timer_at = loop.call_at(deadline, self._check_deadline), deadline

    def disarm(self) -> None:
        self.deadline = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _check_deadline(self) -> None:
        self.timer = None
        if self.deadline is None or self.complete:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self.deadline:  # moved later since the timer was set
            self.timer, self.timer_at = loop.call_at(self.deadline, self._check_deadline), self.deadline
            return
        self.deadline = None
        self._fail(TimeoutError())

    # used by Response / Upstream
    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _fail(self, err: UpstreamError | TimeoutError) -> None:
        if self.error is None:
            self.error = err
        if self.head is not None and not self.head.done():
            self.head.set_exception(err)
        self._wake()

    def send(self, request: bytes) -> asyncio.Future[None]:
        """Write one request; the returned future resolves when the response's head has arrived."""
        assert self.transport is not None
        self._reset()
        self.head = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.head

    async def next_chunk(self) -> bytes:
        while True:
            if self.chunks:
                data = self.chunks.popleft() if len(self.chunks) == 1 else b"".join(self.chunks)
                self.chunks.clear()
                self.buffered = 0
                if self.paused and self.transport is not None:
                    self.paused = False
                    self.transport.resume_reading()
                return data
            if self.complete:
                return b""
            if self.error is not None:
                raise self.error
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.lost and self.transport is not None

    def close(self) -> None:
        self.lost = True
        self.disarm()
        if self.transport is not None:
            self.transport.close()


class Response:
    """An engine's answer: status and headers now, the body as it arrives."""

    def __init__(self, conn: _Connection, pool: Upstream) -> None:
        self._conn, self._pool = conn, pool
        self.status = conn.status
        self.headers = conn.headers  # names in lower case
        self._released = False
        # Whatever body bytes have arrived (waiting for some); b"" once the body is complete. The
        # connection's own method: a stream calls it per chunk, and a wrapper would be a frame more.
        self.read_chunk = conn.next_chunk

    def within(self, seconds: float | None) -> None:
        """The rest of the body must arrive within `seconds` from now (None: no limit), else TimeoutError."""
        self._conn.arm(seconds)

    async def read(self) -> bytes:
        parts = []
        while chunk := await self._conn.next_chunk():
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        """Give the connection back for reuse if the body was read whole; otherwise close it."""
        if not self._released:
            self._released = True
            self._pool.put(self._conn)


class Upstream:
    """Keep-alive connections to the engines, pooled per origin; one per request in flight."""

    def __init__(self) -> None:
        self._idle: dict[Origin, list[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    async def request(self, method: str, url_base: str, path: str, body: bytes, headers: Iterable[tuple[str, str]],
                      connect_timeout: float, head_timeout: float, body_timeout: float | None = None
                      ) -> Response:  # fmt: skip
        """Send one request to `url_base` + `path`; return once the response's head has arrived.
        `body_timeout`: the body must then arrive within that many seconds (Response.within changes it).

        Raises ConnectError, ReadError, or TimeoutError (connect or head took too long; reading the body
        took longer than `body_timeout`)."""
        origin = origin_of(url_base)
        lines = [f"{method} {origin.prefix}{path} HTTP/1.1\r\n".encode("latin-1"), b"Host: ", origin.host_header,
                 b"\r\nContent-Length: ", str(len(body)).encode(), b"\r\n"]  # fmt: skip
        for name, value in headers:
            lines += (name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n")
        lines += (b"\r\n", body)
        request = b"".join(lines)
        conn = self._take(origin)
        reused = conn is not None
        while True:
            if conn is None:
                conn = await self._connect(origin, connect_timeout)
            head = conn.send(request)
            conn.arm(head_timeout)
            try:
                await head
            except ReadError:
                conn.close()
                if reused and not conn.received:
                    # The engine closed this idle connection as we wrote to it: try a fresh one, once.
                    conn, reused = None, False
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            conn.arm(body_timeout)
            return Response(conn, self)

    def _take(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.lost and now - conn.idle_since < IDLE_SECONDS:
                return conn
            conn.close()
        return None

    async def _connect(self, origin: Origin, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        tls = None
        if origin.scheme == "https":
            tls = self._ssl = self._ssl or ssl.create_default_context()
        try:
            async with asyncio.timeout(timeout):
                transport, conn = await loop.create_connection(
                    lambda: _Connection(origin), origin.host, origin.port, ssl=tls,
                    server_hostname=origin.host if tls else None,
                )  # fmt: skip
        except OSError as err:  # refused, unreachable, DNS, TLS (ssl.SSLError is an OSError)
            raise ConnectError(f"cannot connect to {origin.host}:{origin.port}: {err}") from err
        conn.transport = transport  # uvloop calls connection_made a loop turn later
        return conn

    def put(self, conn: _Connection) -> None:
        if self._closed or not conn.reusable():
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.origin, []).append(conn)

    async def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()

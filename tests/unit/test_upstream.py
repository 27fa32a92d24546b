"""The gateway's upstream HTTP/1.1 client against scripted servers on loopback, on uvloop and asyncio.

Each server answers with exact bytes, so framing, reuse and failures are what the test says.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
import uvloop

from roundhouse_api import Family
from roundhouse_gateway.app import Gateway
from roundhouse_gateway.engines import upstream
from roundhouse_gateway.engines.catalog import Engine, Timeouts
from roundhouse_gateway.engines.upstream import ConnectError, ReadError, Upstream, origin_of
from roundhouse_gateway.routing.route import Candidate, Features
from roundhouse_gateway.settings import Settings

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
JSON = [("Content-Type", "application/json")]


@pytest.fixture(params=["uvloop", "asyncio"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def runner(coro: Coroutine[Any, Any, Any]) -> Any:
        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(coro)

    return runner


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lengths = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
    length = lengths[0] if lengths else 0
    return head, await reader.readexactly(length)


async def serve(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def test_keep_alive_reuses_one_connection_and_sends_host_and_length(run: Any) -> None:
    connections, heads = [], []

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        connections.append(w)
        while not r.at_eof():
            try:
                head, body = await read_request(r)
            except asyncio.IncompleteReadError:
                return
            heads.append(head)
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    async def main() -> list[bytes]:
        server, url = await serve(handler)
        u = Upstream()
        bodies = []
        for i in range(3):
            resp = await u.request("POST", url + "/prefix/", "/v1/x", b"hello %d" % i, JSON, 1, 1)
            bodies.append(await resp.read())
            resp.release()
        await u.close()
        server.close()
        return bodies

    assert run(main()) == [b"hello 0", b"hello 1", b"hello 2"]
    assert len(connections) == 1
    assert heads[0].startswith(b"POST /prefix/v1/x HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nContent-Length: 7\r\n" in heads[0] and b"\r\nContent-Type: application/json\r\n" in heads[0]


def test_chunked_body_arrives_as_it_is_sent_not_at_the_end(run: Any) -> None:
    release = asyncio.Event()

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        w.write(b"6\r\ndata 1\r\n")
        await release.wait()
        w.write(b"6\r\ndata 2\r\n0\r\n\r\n")

    async def main() -> tuple[int, str, bytes, bytes, bytes]:
        server, url = await serve(handler)
        u = Upstream()
        resp = await u.request("POST", url, "/s", b"{}", JSON, 1, 1)
        first = await asyncio.wait_for(resp.read_chunk(), 1)
        release.set()
        second = await resp.read()
        end = await resp.read_chunk()
        server.close()
        return resp.status, resp.headers["content-type"], first, second, end

    assert run(main()) == (200, "text/event-stream", b"data 1", b"data 2", b"")


def test_a_body_that_ends_with_the_connection_is_whole_and_not_reused(run: Any) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.0 200 OK\r\n\r\nall of it")
        w.close()

    async def main() -> tuple[bytes, int]:
        server, url = await serve(handler)
        u = Upstream()
        resp = await u.request("POST", url, "/", b"", [], 1, 1)
        data = await resp.read()
        resp.release()
        server.close()
        return data, sum(len(v) for v in u._idle.values())

    assert run(main()) == (b"all of it", 0)


def test_a_connection_cut_mid_body_is_a_read_error_and_is_not_pooled(run: Any) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await w.drain()
        w.close()

    async def main() -> tuple[bytes, int]:
        server, url = await serve(handler)
        u = Upstream()
        resp = await u.request("POST", url, "/", b"", [], 1, 1)
        first = await resp.read_chunk()
        with pytest.raises(ReadError, match="closed the connection"):
            await resp.read_chunk()
        resp.release()
        server.close()
        return first, sum(len(v) for v in u._idle.values())

    assert run(main()) == (b"hello", 0)


def test_an_idle_connection_the_engine_closed_is_replaced_transparently(run: Any) -> None:
    served = 0

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal served
        await read_request(r)
        served += 1
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await w.drain()
        await asyncio.sleep(0.05)
        w.close()  # as uvicorn does after its keep-alive timeout

    async def main() -> list[bytes]:
        server, url = await serve(handler)
        u = Upstream()
        out = []
        for _ in range(2):
            resp = await u.request("POST", url, "/", b"", [], 1, 1)
            out.append(await resp.read())
            resp.release()
            await asyncio.sleep(0.2)
        server.close()
        return out

    assert run(main()) == [b"ok", b"ok"]
    assert served == 2


def test_a_stale_connection_that_dies_as_the_request_goes_out_is_retried_once(run: Any) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    async def main() -> bytes:
        server, url = await serve(handler)
        u = Upstream()
        resp = await u.request("POST", url, "/", b"", [], 1, 1)
        await resp.read()
        resp.release()
        (conn,) = u._idle[origin_of(url)]
        # The pool does not know yet: the close has not been seen by the loop when the request is written.
        conn.transport.close()  # type: ignore[union-attr]
        resp = await u.request("POST", url, "/", b"", [], 1, 1)
        data = await resp.read()
        server.close()
        return data

    assert run(main()) == b"ok"


def test_refused_is_a_connect_error_and_a_silent_engine_times_out(run: Any) -> None:
    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async def main() -> None:
        server, url = await serve(silent)
        port = server.sockets[0].getsockname()[1]
        u = Upstream()
        with pytest.raises(TimeoutError):
            await u.request("POST", url, "/", b"", [], 1, 0.2)
        server.close()
        await server.wait_closed()
        with pytest.raises(ConnectError, match=f"127.0.0.1:{port}"):
            await u.request("POST", url, "/", b"", [], 1, 1)

    run(main())


def test_a_body_that_stalls_times_out_by_its_own_deadline_and_a_moved_one(run: Any) -> None:
    """The head arrives, then the body stops: TimeoutError after body_timeout, the connection not pooled;
    within() moves the deadline later (the body then arrives) or lifts it."""

    async def stalls(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            await read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
            await w.drain()
            await asyncio.sleep(0.4)
            w.write(b"cd")
            await w.drain()

    async def main() -> None:
        server, url = await serve(stalls)
        u = Upstream()
        loop = asyncio.get_running_loop()
        resp = await u.request("POST", url, "/", b"", [], 1, 1, body_timeout=0.1)
        began = loop.time()
        with pytest.raises(TimeoutError):
            await resp.read()
        assert loop.time() - began < 0.35
        resp.release()
        assert not u._idle.get(origin_of(url))  # a half-read answer is never reused
        resp = await u.request("POST", url, "/", b"", [], 1, 1, body_timeout=0.1)
        resp.within(1.0)  # later than the first deadline: the timer set for 0.1 s must not fire
        assert await resp.read() == b"abcd"
        resp.release()
        resp = await u.request("POST", url, "/", b"", [], 1, 0.2)  # the head's deadline ends with the head
        assert await resp.read() == b"abcd"
        resp.release()
        await u.close()
        server.close()

    run(main())


def test_a_reply_that_is_not_http_is_a_read_error(run: Any) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")

    async def main() -> None:
        server, url = await serve(handler)
        with pytest.raises(ReadError, match="malformed response"):
            await Upstream().request("POST", url, "/", b"", [], 1, 1)
        server.close()

    run(main())


def test_a_slow_reader_stops_reading_from_the_engine_and_loses_nothing(run: Any) -> None:
    payload = bytes(range(256)) * (16 * 1024)  # 4 MiB

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)
        await w.drain()

    async def main() -> tuple[int, bytes]:
        server, url = await serve(handler)
        resp = await Upstream().request("POST", url, "/", b"", [], 1, 1)
        await asyncio.sleep(0.3)  # the client is slow: the engine keeps sending meanwhile
        buffered = resp._conn.buffered
        data = await resp.read()
        server.close()
        return buffered, data

    buffered, data = run(main())
    assert buffered <= upstream.HIGH_WATER + 1024 * 1024
    assert data == payload


def test_endpoints_must_be_http_urls() -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        origin_of("ftp://engine:21")
    o = origin_of("https://api.example.com/openai/")
    assert (o.scheme, o.host, o.port, o.prefix, o.host_header) == ("https", "api.example.com", 443, "/openai",
                                                                   b"api.example.com")  # fmt: skip


def test_a_503_whose_body_stalls_still_fails_over_quickly(run: Any) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 100\r\n\r\nloading")
        await asyncio.sleep(5)

    async def main() -> tuple[bool | str, float]:
        server, url = await serve(handler)
        gw = Gateway(Settings())
        engine = Engine("e", Family.VLLM, frozenset(["m"]), (url,), "m", timeouts=Timeouts(connect=0.2))

        async def send(msg: dict[str, Any]) -> None:
            raise AssertionError("nothing may reach the client before failover")

        loop = asyncio.get_running_loop()
        start = loop.time()
        got = await gw.forwarder.try_one(send, "rid", Candidate(engine, url), b"{}", [], Features("m"),
                                         "/v1/chat/completions", 0.0, "r")  # fmt: skip
        server.close()
        return got, loop.time() - start

    got, took = run(main())
    assert got == "status:503 engine e: (body unreadable: TimeoutError)"
    assert took < 2


def test_https_engines_are_verified_against_the_trusted_authorities(
    run: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)  # fmt: skip
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust this certificate only, as a private CA would be
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        head, _ = await read_request(r)
        w.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(head.split(b"\r\n")[1]), head.split(b"\r\n")[1])
        )

    async def main() -> tuple[bytes, str]:
        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=tls)
        port = server.sockets[0].getsockname()[1]
        u = Upstream()
        resp = await u.request("GET", f"https://localhost:{port}", "/v1/models", b"", [], 2, 2)
        host = await resp.read()
        with pytest.raises(ConnectError, match="certificate"):
            await Upstream().request("GET", f"https://127.0.0.1:{port}", "/v1/models", b"", [], 2, 2)
        server.close()
        return host, str(resp.status)

    host, status = run(main())
    assert status == "200" and host.startswith(b"Host: localhost:")  # SNI and Host name the engine


def test_bytes_on_an_idle_connection_are_never_taken_for_the_next_answer(run: Any) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            try:
                await read_request(r)
            except asyncio.IncompleteReadError:
                return
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
            await w.drain()
            await asyncio.sleep(0.05)
            w.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 9\r\n\r\nsta")  # half of it, and it stays open

    async def main() -> list[tuple[int, bytes]]:
        server, url = await serve(handler)
        u = Upstream()
        out = []
        for _ in range(2):
            resp = await u.request("POST", url, "/", b"", [], 1, 1)
            out.append((resp.status, await resp.read()))
            resp.release()
            await asyncio.sleep(0.2)
        server.close()
        return out

    assert run(main()) == [(200, b"fresh"), (200, b"fresh")]

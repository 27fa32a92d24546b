"""A real redis-server (Debian's, `make stores`) for the state store tests: its own loopback port and
directory, persistence on (an append-only file written on every command, as the chart runs it)."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import tools
from tests.support.processes import free_port


class RedisServer:
    def __init__(self, work: Path, port: int | None = None, password: str | None = None) -> None:
        self.work = work
        self.port = port or free_port()
        self.password = password  # requirepass, as the chart's StatefulSet runs it with its Secret's
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, prefix: tuple[str, ...] = ()) -> RedisServer:
        """Start it (`prefix`: through another command, e.g. taskset) and wait until it answers PING."""
        try:
            binary = tools.path("redis-server")
        except tools.ToolMissing as err:
            pytest.fail(str(err), pytrace=False)
        self.work.mkdir(parents=True, exist_ok=True)
        log = open(self.work / "redis.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [*prefix, binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.work), "--save", "",
             "--appendonly", "yes", "--appendfsync", "everysec", "--daemonize", "no",
             # No background rewrite of the file: its child would outlive a SIGKILLed server.
             "--auto-aof-rewrite-percentage", "0",
             *(("--requirepass", self.password) if self.password else ())],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(self._auth() + b"PING\r\n")
                    if b"+PONG" in _replies(s, 1 + bool(self.password)):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start:\n{(self.work / 'redis.log').read_text()[-2000:]}")

    def command(self, *args: str) -> bytes:
        """One command over a plain socket (as the default user): the raw reply."""
        parts = [b"*%d\r\n" % len(args)] + [b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args]
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(self._auth() + b"".join(parts))
            return _replies(s, 1 + bool(self.password))

    def _auth(self) -> bytes:
        return f"AUTH {self.password}\r\n".encode() if self.password else b""

    def kill(self) -> None:
        """Die at once (SIGKILL): what was written to the append-only file survives, as after a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def _replies(s: socket.socket, lines: int) -> bytes:
    """What the server sent until `lines` reply lines (simple replies: one line each) have come."""
    data = b""
    while data.count(b"\r\n") < lines:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data

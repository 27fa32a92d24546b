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
    def __init__(self, work: Path, port: int | None = None) -> None:
        self.work = work
        self.port = port or free_port()
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
             "--auto-aof-rewrite-percentage", "0"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start:\n{(self.work / 'redis.log').read_text()[-2000:]}")

    def kill(self) -> None:
        """Die at once (SIGKILL): what was written to the append-only file survives, as after a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

"""Test hosts in network namespaces made by the test itself: addresses the API server accepts in
EndpointSlices (it refuses loopback), reachable only from this machine over a veth pair."""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import dataclass


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()} (network namespaces need root and iproute2)")


@dataclass
class TestHost:
    __test__ = False  # a helper named like a test class: pytest must not try to collect it

    name: str
    address: str  # inside the namespace
    host_side: str  # veth end left in the root namespace

    @classmethod
    def create(cls, index: int) -> TestHost:
        """A namespace with 10.213.<index>.2, linked to the host's 10.213.<index>.1."""
        tag = uuid.uuid4().hex[:6]
        name, outer, inner = f"rh-{tag}", f"rh{tag}a", f"rh{tag}b"
        _ip("netns", "add", name)
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", name)
        _ip("addr", "add", f"10.213.{index}.1/30", "dev", outer)
        _ip("link", "set", outer, "up")
        _ip("netns", "exec", name, "ip", "addr", "add", f"10.213.{index}.2/30", "dev", inner)
        _ip("netns", "exec", name, "ip", "link", "set", inner, "up")
        _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        return cls(name, f"10.213.{index}.2", outer)

    def run(self, argv: list[str]) -> list[str]:
        """`argv` prefixed to run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        subprocess.run(["ip", "link", "del", self.host_side], capture_output=True)

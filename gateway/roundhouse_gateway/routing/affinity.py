"""Prefix affinity: consistent hashing with bounded load over an engine's replicas. Pure.

A conversation's first PREFIX_CHARS characters (its system prompt, then earlier turns) hash to a
point on a ring of the replicas' virtual nodes; the request goes to the first replica clockwise
whose outstanding requests, with this one, stay within (1 + epsilon) x the average (or one): so a
conversation keeps landing where its prefix is cached, new prefixes spread, a hot prefix spills to
the next replicas instead of piling up, and a replica that goes away moves only its own share
(Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with Bounded Loads", 2018).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

PREFIX_CHARS = 1024  # about 256 tokens: the blocks a system prompt fills first
VNODES = 160  # virtual nodes per replica: at 16 replicas, every share within about 25% of the mean


def _h(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def prefix_key(body: dict[str, Any], kind: str) -> int | None:
    """The hash of a request's prompt prefix (chat: the messages in order; completions: the prompt)."""
    if kind == "chat":
        parts, size = [], 0
        for m in body.get("messages") or []:
            content = m.get("content") if isinstance(m, dict) else None
            text = content if isinstance(content, str) else repr(content)
            piece = f"{m.get('role')}\x00{text}\x01" if isinstance(m, dict) else ""
            parts.append(piece)
            size += len(piece)
            if size >= PREFIX_CHARS:
                break
        text = "".join(parts)
    elif kind == "completions" and isinstance(body.get("prompt"), str):
        text = body["prompt"]
    else:
        return None
    return _h(text[:PREFIX_CHARS].encode("utf-8", "surrogatepass")) if text else None


def keyed(prefix: int, name: str) -> int:
    """A prefix key of its own for `name` (an adapter: the same prompt under another adapter is another cache)."""
    return prefix ^ _h(name.encode())


class Ring:
    """Virtual nodes of a set of endpoints, sorted by hash."""

    def __init__(self, endpoints: tuple[str, ...], vnodes: int = VNODES) -> None:
        points = sorted((_h(f"{ep}#{i}".encode()), ep) for ep in endpoints for i in range(vnodes))
        self.hashes = [p[0] for p in points]
        self.owners = [p[1] for p in points]
        self.size = len(endpoints)

    def walk(self, key: int) -> Iterator[str]:
        """Every endpoint once, clockwise from `key` (lazily: the first is usually the answer)."""
        seen: set[str] = set()
        start = bisect.bisect(self.hashes, key)
        n = len(self.owners)
        for i in range(n):
            ep = self.owners[(start + i) % n]
            if ep not in seen:
                seen.add(ep)
                yield ep
                if len(seen) == self.size:
                    return


@functools.lru_cache(maxsize=1024)
def ring(endpoints: tuple[str, ...]) -> Ring:
    return Ring(endpoints)


def pick(key: int, endpoints: list[str], load: Callable[[str], float], epsilon: float) -> tuple[str, int]:
    """The endpoint for `key`, and how many replicas clockwise were skipped as too loaded (0: its own)."""
    loads = {ep: load(ep) for ep in endpoints}
    # The paper rounds the cap up; at a few requests per replica that lets one replica hold twice the
    # mean while others idle. Not rounding keeps the bound tight, and an idle replica always fits.
    cap = max(1.0, (1 + epsilon) * (sum(loads.values()) + 1) / len(loads))
    for skipped, ep in enumerate(ring(tuple(sorted(loads))).walk(key)):
        if loads[ep] + 1 <= cap:
            return ep, skipped
    return min(loads, key=loads.__getitem__), len(loads)  # every one at the cap: the least loaded

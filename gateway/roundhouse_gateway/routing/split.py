"""A/B splits and shadow copies, decided per request. Pure.

Several engines that serve one name are arms of a split: a user's requests go to one arm, chosen by
weighted rendezvous hashing of the user (the request's `user` field, else the key's name) over the
arms' `routing.weight`. Each arm wins with probability weight / sum of weights; an arm that cannot
serve (sick, at its cap, gone) gives its users to the others, and only its users move, so a
conversation stays in one arm. A shadow engine (`routing.shadow`) gets a copy of a sampled share of a
model's requests; the sample is a hash of the request id, so it is the same on every replica.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

from roundhouse_gateway.engines.catalog import Catalog, Engine

AB = "ab"  # X-Roundhouse-Engine: ab[:primary] — answered by the primary, the other arms get a copy


def _unit(*parts: str) -> float:
    """A uniform number in (0, 1) from the parts (the same on every replica and every run)."""
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / 2.0**64


def arm(user: str, arms: Iterable[tuple[str, int]]) -> str | None:
    """The arm (name) that `user` is assigned among (name, weight) pairs; weight 0 never wins."""
    best: tuple[float, str] | None = None
    for name, weight in arms:
        if weight <= 0:
            continue
        # log(u)/w is the largest for arm i with probability w_i / sum(w): exponential clocks.
        score = math.log(_unit(user, name)) / weight
        if best is None or score > best[0]:
            best = (score, name)
    return best[1] if best else None


def sampled(request_id: str, engine: str, percent: float) -> bool:
    """Whether request `request_id` is copied to the shadow `engine`, which takes `percent` of them."""
    return percent >= 100 or _unit(request_id, engine) * 100 < percent


def parse_ab(override: str | None) -> tuple[bool, str | None]:
    """(whether the request asks for an A/B comparison, the primary it names): `ab` or `ab:<engine>`."""
    if override is None:
        return False, None
    head, sep, primary = override.partition(":")
    if head.lower() != AB:
        return False, None
    return True, (primary or None) if sep else None


def shadows(model: str, request_id: str, catalog: Catalog, primary: str | None) -> list[Engine]:
    """The shadow engines that get a copy of this request of `model` (sampled by their percent)."""
    names = {n for e in catalog.engines if model in e.served for n in e.served} | {model}  # a shadow may name an alias
    return [e for e in catalog.engines
            if e.shadow_of in names and e.name != primary and e.ready and e.endpoints and catalog.mode.active(e)
            and sampled(request_id, e.name, e.shadow_percent)]  # fmt: skip

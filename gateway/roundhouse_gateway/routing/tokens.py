"""Exact prompt token counts, when the estimate is too close to an engine's context to choose by.

Several engines may serve one model with different context sizes (variants). The four-characters-
a-token estimate decides most requests; one whose estimate is within NEAR of a variant's context
is counted by a running engine of the same model with its own tokenizer (the family knows how:
families.*.count_tokens), bounded by TIMEOUT. When no engine can count, the estimate stands, and
X-Roundhouse-Route-Reason says which was used.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from roundhouse_api.families import FAMILIES
from roundhouse_gateway.engines.catalog import Catalog, Engine
from roundhouse_gateway.engines.health import Health
from roundhouse_gateway.engines.upstream import Upstream, UpstreamError
from roundhouse_gateway.routing.route import Features

log = logging.getLogger("roundhouse.gateway.tokens")
NEAR = 0.3  # within 30% of a context size (either side): count exactly
TIMEOUT = 2.0


def near_a_limit(f: Features, catalog: Catalog) -> bool:
    """Whether the estimate is close enough to a serving engine's context for the count to matter."""
    need = f.prompt_tokens + f.max_tokens
    if not f.prompt_tokens:
        return False
    return any(abs(need - c) <= NEAR * c for c in catalog.contexts.get(f.model, ()))


def counter(f: Features, catalog: Catalog, health: Health) -> tuple[Engine, str] | None:
    """A running engine of the model whose family can count, and one of its healthy endpoints."""
    for e in catalog.engines:
        if f.model not in e.served or not e.ready or FAMILIES[e.family].tokenize_path is None:
            continue
        for ep in e.endpoints:
            if health.healthy(ep):
                return e, ep
    return None


async def exact(f: Features, body: dict[str, Any], catalog: Catalog, health: Health, upstream: Upstream) -> Features:
    """`f` with the prompt counted by an engine when it matters and one can; else `f` as estimated."""
    if not near_a_limit(f, catalog):
        return f
    f = dataclasses.replace(f, near_limit=True)
    found = counter(f, catalog, health)
    if found is None:
        return f
    engine, endpoint = found
    steps = FAMILIES[engine.family].count_tokens(body, f.kind, engine.upstream_model)
    headers = [("Content-Type", "application/json")]
    try:
        path, payload = next(steps)
        while True:
            resp = await upstream.request("POST", endpoint, path, json.dumps(payload).encode(), headers, TIMEOUT,
                                          TIMEOUT)  # fmt: skip
            try:
                data = await resp.read()
                answer = json.loads(data) if resp.status == 200 else None
            finally:
                resp.release()
            if answer is None:
                return f
            path, payload = steps.send(answer)
    except StopIteration as done:
        count = done.value
    except (UpstreamError, TimeoutError, ValueError) as err:
        log.info("token count failed; using the estimate", extra={"engine": engine.name, "error": repr(err)})
        return f
    if not isinstance(count, int):
        return f
    return dataclasses.replace(f, prompt_tokens=count, tokens="exact")

"""Copies of a request for comparison: to the engines that shadow its model (`routing.shadow`, a sampled
share) and, for `X-Roundhouse-Engine: ab`, to the other arms. A copy goes as a non-streaming request
beside the primary's, never before it and never instead of it; its answer is read, compared with the
primary's and discarded; its errors reach no client. At most `maxInFlight` copies per engine are in
flight: the rest are shed and counted."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from typing import Any

from roundhouse_gateway import metrics
from roundhouse_gateway.compare.agreement import agreement, answer_text
from roundhouse_gateway.compare.window import Answer, Comparison
from roundhouse_gateway.engines.catalog import Engine
from roundhouse_gateway.engines.fleet import Fleet
from roundhouse_gateway.engines.upstream import Upstream, UpstreamError
from roundhouse_gateway.request.read import Request
from roundhouse_gateway.request.sse import usage_of
from roundhouse_gateway.routing import split
from roundhouse_gateway.routing.route import Decision

log = logging.getLogger("roundhouse.gateway.shadow")
AB_MAX_IN_FLIGHT = 4  # copies to another arm for X-Roundhouse-Engine: ab, per engine
PRIMARY_WAIT = 600.0  # a copy waits this long at most for the primary's answer to compare with


class Shadowing:
    """One request's copies, waiting for the primary's answer."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.primary: asyncio.Future[tuple[str, str | None]] = asyncio.get_running_loop().create_future()

    def answered(self, engine: str, data: bytes | None) -> None:
        """The primary's answer (the engine that gave it, its bytes; None: it failed)."""
        if not self.primary.done():
            self.primary.set_result((engine, answer_text(data) if data else None))


class Shadower:
    def __init__(self, fleet: Fleet, upstream: Upstream, comparison: Comparison) -> None:
        self.fleet, self.upstream, self.comparison = fleet, upstream, comparison
        self.in_flight: Counter[str] = Counter()  # copies waiting for their engine's answer
        self.tasks: set[asyncio.Task[None]] = set()  # held: the loop keeps only weak references to tasks

    def targets(self, request: Request, d: Decision, rid: str) -> list[tuple[Engine, int]]:
        """The engines this request is copied to, each with its bound on copies in flight."""
        catalog = self.fleet.catalog
        model = request.features.model
        if model not in catalog.compared:
            return []
        primary = d.candidates[0].engine.name if d.candidates else None
        out = [(e, e.shadow_max) for e in split.shadows(model, rid, catalog, primary)]
        for name in d.compare:
            if (e := catalog.by_name(name)) is not None and all(e is not t for t, _ in out):
                out.append((e, AB_MAX_IN_FLIGHT))
        return out

    def start(self, request: Request, targets: list[tuple[Engine, int]], rid: str, started: float) -> Shadowing:
        """Send the copies now (in the background); compare each with the primary once it has answered.
        `started` is when the gateway received the request (perf_counter): a copy's latency is timed from it,
        as the primary's is, so the two are compared over the same span."""
        shadowing = Shadowing(request.features.model)
        body = {k: v for k, v in request.body.items() if k != "stream_options"}
        body["stream"] = False
        for engine, bound in targets:
            if self.in_flight[engine.name] >= bound:
                metrics.child(metrics.SHADOW, shadowing.model, engine.name, "shed").inc()
                self.comparison.shed(shadowing.model, engine.name, time.time())
                continue
            self.in_flight[engine.name] += 1
            copy = self._copy(engine, body, request.features.path, rid, shadowing, started)
            self.tasks.add(task := asyncio.create_task(copy))
            task.add_done_callback(self.tasks.discard)
        return shadowing

    async def _copy(self, engine: Engine, body: dict[str, Any], path: str, rid: str, shadowing: Shadowing,
                    started: float) -> None:  # fmt: skip
        model, fleet = shadowing.model, self.fleet
        endpoints = [ep for ep in engine.endpoints if fleet.health.healthy(ep)] or list(engine.endpoints)
        if not endpoints:
            self.in_flight[engine.name] -= 1
            return
        endpoint = min(endpoints, key=fleet.load_of)
        payload = json.dumps({**body, "model": engine.upstream_model}).encode()
        headers = [("Content-Type", "application/json"), ("X-Request-Id", rid), ("X-Roundhouse-Shadow", "1")]
        if engine.api_key:
            headers.append(("Authorization", f"Bearer {engine.api_key}"))
        t = engine.timeouts
        data, status = b"", 599
        fleet.outstanding[endpoint] += 1
        try:
            async with asyncio.timeout(t.first_byte):
                resp = await self.upstream.request("POST", endpoint, path, payload, headers, t.connect, t.first_byte)
                try:
                    data, status = await resp.read(), resp.status
                finally:
                    resp.release()
        except (UpstreamError, TimeoutError) as err:
            log.info("shadow copy failed", extra={"request_id": rid, "engine": engine.name, "error": repr(err)})
        finally:
            fleet.outstanding[endpoint] -= 1
            self.in_flight[engine.name] -= 1
        latency = time.perf_counter() - started
        _, completion = usage_of(data) if status < 400 else (0, 0)
        # No TTFT: the copy is not streamed, so its first byte comes with its whole answer.
        self.comparison.answered(model, engine.name, "shadow", Answer(time.time(), status, None, latency, completion))
        metrics.child(metrics.SHADOW, model, engine.name, "ok" if status < 400 else "error").inc()
        if status >= 400:
            return
        try:
            primary, text = await asyncio.wait_for(asyncio.shield(shadowing.primary), PRIMARY_WAIT)
        except TimeoutError:
            return
        mine = answer_text(data)
        if text is None or mine is None or primary == engine.name:
            return
        exact, similarity = agreement(text, mine)
        self.comparison.paired(model, engine.name, time.time(), exact, similarity)
        metrics.child(metrics.AGREEMENT, model, engine.name).observe(similarity)

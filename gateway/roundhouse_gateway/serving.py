"""A request's way through the gateway before any byte is forwarded: the caller's key admits it (models,
engines, limits), routing decides (waiting for an engine started on demand, holding during a switch,
queueing at concurrency caps), and at the end the key is charged for what it used."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import metrics, models, tokens
from .auth import Auth
from .catalog import Catalog
from .demand import Waiter
from .keys import Identity
from .load import EngineLoad
from .proxy import Proxying
from .routing import Candidate, Decision, Features, route
from .usage import CALL, Call
from .waiting import Prelude
from .wire import ClientError, Receive, Scope, Send, cancel_on_disconnect, parse_request, read_body

log = logging.getLogger("roundhouse.gateway")


class Serving(Proxying):
    """The Gateway's admitting and routing half; the state it reads is the Gateway's."""

    catalog: Catalog
    auth: Auth
    engine_load: EngineLoad
    changed: asyncio.Event
    turn: int
    wait_for: Callable[[set[str], int], None]

    async def completion(self, scope: Scope, receive: Receive, send: Send, rid: str, kind: str,
                         who: Identity) -> None:  # fmt: skip
        started = time.perf_counter()
        call = Call(key=who.name)
        CALL.set(call)
        try:
            raw = await read_body(receive, self.settings.max_body_bytes)
            body, features, rewritten = parse_request(raw, kind, scope)
            call.model = features.model
            features, body, rewritten, send = self.admit(who, call, body, features, rewritten, send)
            # One watcher task cancels this one if the client leaves, which stops the upstream request
            # too (a second task for the proxying and asyncio.wait cost ~10 us a request).
            handler = asyncio.current_task()
            assert handler is not None
            left = asyncio.Event()
            watcher = asyncio.create_task(cancel_on_disconnect(receive, handler, left))
            try:
                await self.answer(send, rid, body, raw if not rewritten else None, features, scope["path"], started)
            except asyncio.CancelledError:
                if not left.is_set():
                    raise
                handler.uncancel()
                call.status = call.status or 499  # the client closed the request
                log.info("client disconnected", extra={"request_id": rid, "model": features.model})
            finally:
                watcher.cancel()
        except ClientError as err:
            call.status = err.status
            raise
        finally:
            if self.auth.enabled:
                self.account(who, call)

    def admit(self, who: Identity, call: Call, body: dict[str, Any], f: Features, rewritten: bool, send: Send
              ) -> tuple[Features, dict[str, Any], bool, Send]:  # fmt: skip
        """The key's models, engines and limits: 404 for a model it may not use (OpenAI's answer),
        429 over a limit; streams are asked for their usage, which the client then does not see."""
        if not who.may_use_model(f.model):
            raise ClientError(404, models.not_found(f.model), "model_not_found", "model")
        if who.engines:
            f = dataclasses.replace(f, engines=who.engines)
        verdict = self.auth.limiter.admit(who, time.monotonic(), time.time(), self.auth.clients.ring.headers_always)
        if verdict.refusal is not None:
            r = verdict.refusal
            metrics.child(metrics.RATE_LIMITED, who.name, r.type).inc()
            raise ClientError(429, r.message, r.code, None, r.type,
                              {"Retry-After": str(max(1, r.retry_after)), **verdict.named()})  # fmt: skip
        if f.stream and self.auth.enabled and f.kind in ("chat", "completions"):
            options = body.get("stream_options") or {}
            if options.get("include_usage") is not True:
                body = {**body, "stream_options": {**options, "include_usage": True}}
                rewritten, call.strip_usage = True, True
        call.headers = verdict.headers  # app.py adds them to whatever answer this request gets
        return f, body, rewritten, send

    def account(self, who: Identity, call: Call) -> None:
        """Count what a request used against its key: usage rows, metrics, token limits."""
        model = call.model if call.model in self.catalog.served else ""
        wall = time.time()
        self.auth.usage.record(who.name, model, call.engine, call.status or 499, call.prompt_tokens,
                               call.completion_tokens, wall)  # fmt: skip
        self.auth.limiter.spend(who, call.prompt_tokens + call.completion_tokens, time.monotonic(), wall)

    async def answer(self, send: Send, rid: str, body: dict[str, Any], raw: bytes | None, features: Features,
                     path: str, started: float) -> None:  # fmt: skip
        """Route (waiting for an engine to start if need be), then forward, or answer the error."""
        prelude = Prelude(send, {"X-Request-Id": rid}) if features.stream else None
        features = await tokens.exact(features, body, self.catalog, self.health, self.upstream)
        decision = await self.decide(features, prelude.waiting if prelude else None)
        if decision.error:
            status, code, message = decision.error
            headers = {"X-Request-Id": rid, "X-Roundhouse-Route-Reason": decision.reason or code}
            if status == 503:
                headers["Retry-After"] = str(decision.retry_after or self.settings.retry_after_seconds)
            # An unknown model is the client's string: it must not become a new metric series per typo.
            model_label = "" if code == "model_not_found" else features.model
            if (call := CALL.get()) is not None:
                call.status = status
            metrics.child(metrics.REQUESTS, model_label, "", "", str(status)).inc()
            log.info("request", extra={"request_id": rid, "model": features.model, "status": status, "reason": code})
            if prelude is not None and prelude.started:
                await prelude.fail(message, "service_unavailable", code)
                return
            param = "model" if code in ("model_not_found", "unsupported_endpoint") else None
            kind = "invalid_request_error" if status < 500 else "service_unavailable"
            raise ClientError(status, message, code, param, kind, headers)
        for part in decision.reason.split(","):
            metrics.child(metrics.DECISIONS, part.split(":", 1)[0]).inc()
        await self.forward(prelude.send if prelude else send, rid, body, raw, features, decision, path, started)

    async def decide(self, f: Features, waiting: Callable[[str], Awaitable[None]] | None = None) -> Decision:
        """Route; wait for an engine started on demand (bounded, `waiting` called meanwhile), hold while
        the mode switches (bounded), queue briefly when every endpoint is at its cap."""
        policy = self.catalog.mode.policy
        hold_deadline = time.monotonic() + policy.max_hold_seconds
        queue_deadline = time.monotonic() + self.catalog.mode.rules.queue_timeout_seconds
        waiter: Waiter | None = None
        outcome = "gave-up"
        waited_for: set[str] = set()  # engines this request waits for: their starting replicas are probed
        try:
            while True:
                self.turn += 1
                d = route(f, self.catalog, self.health.healthy, self.load_of, self.turn)
                if new := self.starting_for(d) - waited_for:
                    waited_for |= new
                    self.wait_for(new, +1)
                if d.activate is not None:
                    if waiter is None or waiter.engine != d.activate:
                        if waiter is not None:
                            waiter.end("rerouted")
                        waiter = Waiter(self.demand, d.activate, self.catalog.mode.on_demand.max_wait_seconds)
                    if waiter.expired():
                        outcome = "timeout"
                        return waiter.timed_out(d.reason)
                    if waiting is not None:
                        await waiting(d.activate)
                    await self.wait_change(waiter.deadline)
                    continue
                outcome = "served" if d.candidates else "error"
                if waiter is not None and d.candidates:
                    # Say that this request waited for its engine to start (and how long).
                    waited = time.time() - waiter.started
                    d = dataclasses.replace(d, reason=f"{d.reason},activated:{waiter.engine}:{waited:.2f}s")
                if d.hold_for is not None:
                    if time.monotonic() >= hold_deadline:
                        why = f"the {d.hold_for.value} engines are still starting after a mode switch"
                        return Decision(error=(503, "engine_switching", why), reason="hold:timeout")
                    await self.wait_change(hold_deadline)
                    continue
                if d.candidates and all(self.at_cap(c) for c in d.candidates):
                    if time.monotonic() >= queue_deadline:
                        return Decision(error=(503, "engine_overloaded", "every engine for this model is at its"
                                               " concurrency limit"), reason="concurrency-cap")  # fmt: skip
                    self.slot_freed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.slot_freed.wait(), max(0.0, queue_deadline - time.monotonic()))
                    continue
                return d
        finally:
            if waiter is not None:
                waiter.end(outcome)
            self.wait_for(waited_for, -1)

    def starting_for(self, d: Decision) -> set[str]:
        """The engines a held request waits for: the one it activates, or the switch's incoming family."""
        if d.activate is not None:
            return {d.activate}
        if d.hold_for is not None:
            return {e.name for e in self.catalog.engines if e.family == d.hold_for and e.starting}
        return set()

    async def wait_change(self, deadline: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.changed.wait(), min(1.0, max(0.0, deadline - time.monotonic())))

    def load_of(self, endpoint: str) -> float:
        """What routing weighs an endpoint by: this gateway's requests there, plus those of other clients
        the engine last reported (fresh readings only, when the mode's rules use them)."""
        if self.catalog.mode.rules.engine_load:
            return self.outstanding[endpoint] + self.engine_load.others(endpoint)
        return self.outstanding[endpoint]

    def at_cap(self, c: Candidate) -> bool:
        return c.engine.max_concurrency is not None and self.outstanding[c.endpoint] >= c.engine.max_concurrency

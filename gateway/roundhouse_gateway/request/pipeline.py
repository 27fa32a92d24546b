"""The OpenAI endpoints' way through the gateway: read -> admit -> decide -> forward -> account, each a
module of this package. This class only hands each stage's result to the next."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from roundhouse_gateway.engines.fleet import Fleet
from roundhouse_gateway.http.server import ON_DISCONNECT
from roundhouse_gateway.http.wire import ClientError, Receive, Scope, Send, cancel_on_disconnect
from roundhouse_gateway.keys.auth import Auth
from roundhouse_gateway.keys.keys import Identity
from roundhouse_gateway.keys.usage import CALL, Call
from roundhouse_gateway.request import account, read
from roundhouse_gateway.request.account import Outcome
from roundhouse_gateway.request.admit import admit
from roundhouse_gateway.request.decide import Decider, refusal
from roundhouse_gateway.request.forward import Forwarder
from roundhouse_gateway.request.read import Request
from roundhouse_gateway.request.shadow import Shadower
from roundhouse_gateway.request.waiting import Prelude

log = logging.getLogger("roundhouse.gateway")
DisconnectHook = Callable[[Callable[[], None] | None], None]


class Completions:
    """Serves the OpenAI endpoints that go to an engine (chat, completions, embeddings, ...)."""

    def __init__(self, fleet: Fleet, auth: Auth, decider: Decider, forwarder: Forwarder, shadower: Shadower,
                 max_body: int, retry_after: int) -> None:  # fmt: skip
        self.fleet, self.auth, self.decider, self.forwarder = fleet, auth, decider, forwarder
        self.shadower = shadower
        self.max_body, self.retry_after = max_body, retry_after

    async def __call__(self, scope: Scope, receive: Receive, send: Send, rid: str, kind: str, who: Identity,
                       handler: asyncio.Task[Any]) -> None:  # fmt: skip
        """Answer one request of `kind` for `who`; `handler` is the task answering it (cancelled if the client
        leaves)."""
        started = time.perf_counter()
        call = Call(key=who.name)
        CALL.set(call)  # app.py reads it for the headers every answer to this request carries
        try:
            request = await read.read(scope, receive, kind, self.max_body, who.name or None)
            call.model = request.features.model
            request = await admit(who, call, request, self.auth)
            # If the client leaves, this task is cancelled, which stops the upstream request too: the
            # server calls back where it can (http/server.py), else a watcher task waits for the
            # disconnect (a second task for the proxying and asyncio.wait cost ~10 us a request).
            left = False

            def leave() -> None:
                nonlocal left
                left = True
                handler.cancel()

            hook: DisconnectHook | None = (scope.get("extensions") or {}).get(ON_DISCONNECT)
            watcher = None
            if hook is not None:
                hook(leave)
            else:
                watcher = asyncio.create_task(cancel_on_disconnect(receive, leave))
            try:
                await self.answer(send, rid, request, call, started)
            except asyncio.CancelledError:
                if not left:
                    raise
                handler.uncancel()
                call.status = call.status or 499  # the client closed the request
                log.info("client disconnected", extra={"request_id": rid, "model": request.features.model})
            finally:
                if watcher is not None:
                    watcher.cancel()
                elif hook is not None:
                    hook(None)
        except ClientError as err:
            call.status = err.status
            raise
        finally:
            if self.auth.enabled:
                account.charge(who, call, self.auth, self.fleet.catalog)

    async def answer(self, send: Send, rid: str, request: Request, call: Call, started: float) -> None:
        """Decide (waiting for an engine to start if need be), then forward, or answer the refusal."""
        prelude = Prelude(send, {"X-Request-Id": rid}) if request.features.stream else None
        features = await self.decider.counted(request.features, request.body)
        decision = await self.decider.decide(features, prelude.waiting if prelude else None)
        if decision.error:
            status, code, message = decision.error
            account.refused(features, status, code, call, rid)
            if prelude is not None and prelude.started:
                await prelude.fail(message, "service_unavailable", code)
                return
            raise refusal(decision, rid, self.retry_after)
        account.decided(decision)
        targets = self.shadower.targets(request, decision, rid)
        shadowing = self.shadower.start(request, targets, rid, started) if targets else None
        outcome: Outcome | None = None
        try:
            # The prelude's send only matters once it has started the response (it waited): else a layer per chunk.
            outcome = await self.forwarder.forward(prelude.send if prelude and prelude.started else send, rid, request,
                                                   decision, started, shadowing is not None)  # fmt: skip
        finally:
            if shadowing is not None:  # the copies compare with the primary's answer (none if it failed)
                engine = outcome.engine if outcome is not None else None
                shadowing.answered(engine.name if engine else "", outcome.answer if outcome is not None else None)
        account.record(outcome, features, call, self.fleet.stats, rid, started)
        if features.model in self.fleet.catalog.compared:
            account.compared(outcome, features, self.shadower.comparison, started)

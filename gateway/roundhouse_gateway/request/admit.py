"""Stage two, admit: the caller's key decides what the request may use: 404 for a model it may not use
(OpenAI's answer), its engines narrowed to the key's, 429 over a limit (decided in the state store when
it is shared: one round trip, none for a key without limits), 503 when the store is away and the gateway
is set to refuse then. A stream of a counted key asks the engine for its usage, which the client then
does not see."""

from __future__ import annotations

import dataclasses

from roundhouse_gateway import metrics
from roundhouse_gateway.engines import models
from roundhouse_gateway.http.wire import ClientError
from roundhouse_gateway.keys.auth import Auth
from roundhouse_gateway.keys.keys import Identity
from roundhouse_gateway.keys.usage import Call
from roundhouse_gateway.request.read import Request


async def admit(who: Identity, call: Call, request: Request, auth: Auth) -> Request:
    """The request as `who` may send it, counted against its limits; ClientError (404, 429) if it may not.
    `call` gets the x-ratelimit-* headers every answer to this request carries."""
    f, body = request.features, request.body
    if not who.may_use_model(f.model):
        raise ClientError(404, models.not_found(f.model), "model_not_found", "model")
    if who.engines:
        f = dataclasses.replace(f, engines=who.engines)
    verdict = await auth.state.admit(who, auth.clients.ring.headers_always)
    if verdict.refusal is not None:
        r = verdict.refusal
        metrics.child(metrics.RATE_LIMITED, who.name, r.type).inc()
        raise ClientError(429, r.message, r.code, None, r.type,
                          {"Retry-After": str(max(1, r.retry_after)), **verdict.named()})  # fmt: skip
    call.headers = verdict.headers  # app.py adds them to whatever answer this request gets
    rewritten, strip = request.rewritten, False
    if f.stream and auth.enabled and f.kind in ("chat", "completions"):
        options = body.get("stream_options") or {}
        if options.get("include_usage") is not True:
            body = {**body, "stream_options": {**options, "include_usage": True}}
            rewritten, strip = True, True
    call.strip_usage = strip
    if f is request.features and not strip:  # most requests: as read
        return request
    return dataclasses.replace(request, body=body, features=f, rewritten=rewritten, strip_usage=strip)

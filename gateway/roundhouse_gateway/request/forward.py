"""Stage four, forward: the routed request to its candidates in turn (failover until the first byte
reaches the client), the answer streamed through as the engine sends it. Returns how it ended; the
account stage counts it."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import orjson

from roundhouse_api.families import FAMILIES
from roundhouse_gateway import metrics
from roundhouse_gateway.engines.catalog import Engine
from roundhouse_gateway.engines.fleet import Fleet
from roundhouse_gateway.engines.upstream import Response, Upstream, UpstreamError
from roundhouse_gateway.http.wire import ClientError, Send, error_body, respond, wire_name
from roundhouse_gateway.request.account import Outcome
from roundhouse_gateway.request.engine_errors import engine_text, openai_error
from roundhouse_gateway.request.read import Request
from roundhouse_gateway.request.sse import last_usage_event, stream_ended, stream_error, strip_usage, usage_of
from roundhouse_gateway.routing.demand import Demand
from roundhouse_gateway.routing.route import Candidate, Decision, Features

log = logging.getLogger("roundhouse.gateway")
HOT_KINDS = frozenset({"chat", "completions"})  # bodies every family takes as they are
RETRYABLE = {500, 502, 503, 504}
MAX_ATTEMPTS = 4


def payload(body: dict[str, Any], raw: bytes | None, f: Features, engine: Engine) -> bytes:
    """The bytes to send `engine`: the client's own when nothing changes, else the body with the
    engine's model name, in the shape its family takes at that path."""
    if f.kind not in HOT_KINDS:
        body = FAMILIES[engine.family].request_body(f.path, body)
        raw = None
    if (adapter := engine.adapter.get(f.model)) is not None:  # a LoRA adapter: the engine's name and fields for it
        return _dumps(adapter.rewrite(body))
    if raw is not None and engine.upstream_model == f.model:
        return raw
    return _dumps({**body, "model": engine.upstream_model})


def _dumps(body: dict[str, Any]) -> bytes:
    """JSON bytes: orjson's, or json's for what orjson cannot write (integers past 64 bits, which the
    request shapes let through in fields they do not name)."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body).encode()


def _counted(o: Outcome, data: bytes) -> Outcome:
    o.prompt_tokens, o.completion_tokens = usage_of(data)
    o.counted = True
    return o


class Forwarder:
    """Sends requests to the engines and their answers to the clients; keeps the fleet's counts."""

    def __init__(self, fleet: Fleet, upstream: Upstream, demand: Demand, retry_after: int) -> None:
        self.fleet, self.upstream, self.demand, self.retry_after = fleet, upstream, demand, retry_after

    async def forward(self, send: Send, rid: str, request: Request, d: Decision, started: float,
                      capture: bool = False) -> Outcome:  # fmt: skip
        """The answer of the first candidate that gives one (`capture`: keep it on the Outcome)."""
        f, fleet = request.features, self.fleet
        last_error = "no candidate"
        reason = d.reason
        for attempt, cand in enumerate(d.candidates[:MAX_ATTEMPTS]):
            engine = cand.engine
            if attempt and not fleet.health.healthy(cand.endpoint):
                continue
            try:
                data = payload(request.body, request.forwardable, f, engine)
            except ValueError as err:
                raise ClientError(400, f"engine {engine.name}: {err}", "unsupported_request") from None
            headers = [("Content-Type", "application/json"), ("X-Request-Id", rid)]
            if engine.api_key:
                headers.append(("Authorization", f"Bearer {engine.api_key}"))
            fleet.health.attempt(cand.endpoint)
            fleet.outstanding[cand.endpoint] += 1
            metrics.child(metrics.IN_FLIGHT, engine.name).inc()
            self.demand.request_begin(engine.name)
            try:
                sent = await self.try_one(send, rid, cand, data, headers, f, f.path, started, reason,
                                          request.strip_usage, capture)  # fmt: skip
            finally:
                fleet.outstanding[cand.endpoint] -= 1  # first: the demand report counts it (stopping replicas)
                self.demand.request_end(engine.name)
                metrics.child(metrics.IN_FLIGHT, engine.name).dec()
                fleet.slot_freed.set()
            if isinstance(sent, Outcome):
                return sent
            last_error = sent
            metrics.child(metrics.FAILOVERS, engine.name, last_error.split(":", 1)[0]).inc()
            reason = f"{d.reason},failover"
            log.warning("failover", extra={"request_id": rid, "engine": engine.name, "endpoint": cand.endpoint,
                                           "error": last_error})  # fmt: skip
        await respond(send, 503, error_body(f"no engine could serve the request ({last_error})", "service_unavailable",
                                            "no_healthy_engine"),
                      {"Retry-After": str(self.retry_after), "X-Request-Id": rid,
                       "X-Roundhouse-Route-Reason": reason})  # fmt: skip
        return Outcome(None, "", 503, reason)

    async def try_one(self, send: Send, rid: str, cand: Candidate, payload: bytes, headers: list[tuple[str, str]],
                      f: Features, path: str, started: float, reason: str,
                      strip: bool = False, capture: bool = False) -> Outcome | str:  # fmt: skip
        """Forward to one endpoint. Its Outcome once the answer went to the client; else why it failed
        (nothing has reached the client yet, so the caller may try the next candidate)."""
        engine, t, health = cand.engine, cand.engine.timeouts, self.fleet.health
        sent_at = time.perf_counter()
        try:
            # The body of an answer that is not a stream gets first_byte too (a stream sets its own below).
            resp = await self.upstream.request("POST", cand.endpoint, path, payload, headers, t.connect, t.first_byte,
                                               None if f.stream else t.first_byte)  # fmt: skip
        except (UpstreamError, TimeoutError) as err:
            health.failure(cand.endpoint, type(err).__name__)
            return f"connect:{type(err).__name__}"
        try:
            metrics.child(metrics.UPSTREAM, engine.name).observe(time.perf_counter() - sent_at)
            if resp.status in RETRYABLE:
                health.failure(cand.endpoint, f"HTTP {resp.status}")
                try:
                    async with asyncio.timeout(t.connect):  # for the log line and the 503: never wait long
                        detail = engine_text(resp.headers.get("content-type", ""), (await resp.read())[:4096])
                except (UpstreamError, TimeoutError) as err:
                    detail = f"(body unreadable: {type(err).__name__})"
                return f"status:{resp.status} engine {engine.name}: {detail[:200]}"
            out_headers = {
                "Content-Type": resp.headers.get("content-type", "application/json"),
                "X-Request-Id": rid,
                "X-Roundhouse-Engine": engine.name,
                "X-Roundhouse-Route-Reason": reason,
            }
            if "text/event-stream" in out_headers["Content-Type"]:  # stream() sets its own deadlines
                return await self.stream(send, resp, out_headers, engine, cand, f, started, rid, reason, strip,
                                         capture)  # fmt: skip
            # Small bodies: read it all first, so a failure mid-body can still fail over.
            try:
                if f.stream:  # an answer that is not a stream to a request for one: its body in first_byte
                    resp.within(t.first_byte)
                data = await resp.read()
            except (UpstreamError, TimeoutError) as err:
                health.failure(cand.endpoint, type(err).__name__)
                return f"read:{type(err).__name__}"
            outcome = Outcome(engine, cand.endpoint, resp.status, reason, time.perf_counter() - started)
            if capture:
                outcome.answer = data
            if resp.status < 400:
                health.success(cand.endpoint)
                _counted(outcome, data)
            elif (shaped := openai_error(engine.name, resp.status, out_headers["Content-Type"], data)) is not None:
                data, out_headers["Content-Type"] = shaped, "application/json"
            await respond(send, resp.status, data, out_headers)
            return outcome
        finally:
            resp.release()

    async def stream(self, send: Send, resp: Response, headers: dict[str, str], engine: Engine, cand: Candidate,
                     f: Features, started: float, rid: str, reason: str,
                     strip: bool = False, capture: bool = False) -> Outcome | str:  # fmt: skip
        health, idle = self.fleet.health, engine.timeouts.idle
        try:
            resp.within(engine.timeouts.first_byte)
            first = await resp.read_chunk()
            resp.within(None)  # from here, the idle timeout below
        except (UpstreamError, TimeoutError) as err:
            health.failure(cand.endpoint, type(err).__name__)
            return f"read:{type(err).__name__}"
        if not first:
            health.failure(cand.endpoint, "empty stream")
            return "read:empty stream"
        outcome = Outcome(engine, cand.endpoint, resp.status, reason, time.perf_counter() - started)
        pending, usage_chunk = b"", b""
        tail = first[-256:]
        if strip:
            first, pending, dropped = strip_usage(b"", first)
            usage_chunk = dropped or b""
        elif b'"usage"' in first:
            usage_chunk = first
        await send({"type": "http.response.start", "status": resp.status,
                    "headers": [(wire_name(k), v.encode()) for k, v in headers.items()]})  # fmt: skip
        await send({"type": "http.response.body", "body": first, "more_body": True})
        kept = [first] if capture else None
        ended_cleanly = stream_ended(f.kind, first, first)
        loop = asyncio.get_running_loop()
        try:
            # One deadline per stream, moved at most once a second: asyncio.wait_for around every
            # read costs a task per chunk.
            async with asyncio.timeout(idle) as deadline:
                while True:
                    chunk = await resp.read_chunk()
                    if not chunk:
                        break
                    now = loop.time()
                    if now + idle - (deadline.when() or now) > 1.0:
                        deadline.reschedule(now + idle)
                    tail = (tail + chunk)[-256:]
                    ended_cleanly = ended_cleanly or stream_ended(f.kind, tail, chunk)
                    if strip:
                        chunk, pending, dropped = strip_usage(pending, chunk)
                        usage_chunk = dropped or usage_chunk
                    elif b'"usage"' in chunk:
                        usage_chunk = chunk
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    if kept is not None:
                        kept.append(chunk)
        except (UpstreamError, TimeoutError) as err:
            ended_cleanly = False
            health.failure(cand.endpoint, type(err).__name__)
            log.warning("stream broken", extra={"request_id": rid, "engine": engine.name, "error": type(err).__name__})
        if not ended_cleanly:
            # After the first byte there is no failover: end the stream the way OpenAI clients expect.
            event = stream_error(f.kind, f"engine {engine.name} stopped mid-stream")
            await send({"type": "http.response.body", "body": event, "more_body": False})
            outcome.status = 502
            return outcome
        health.success(cand.endpoint)
        if kept is not None:
            outcome.answer = b"".join(kept)
        await send({"type": "http.response.body", "body": pending, "more_body": False})
        if usage_chunk:
            _counted(outcome, usage_chunk if strip else last_usage_event(usage_chunk))
        return outcome

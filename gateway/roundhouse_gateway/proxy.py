"""The proxying path: forward a routed request to its candidates in turn (failover until the first
byte reaches the client), stream the answer through, and count what it took."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from roundhouse_api.families import FAMILIES

from . import metrics
from .catalog import Engine
from .demand import Demand
from .engine_errors import engine_text, openai_error
from .health import Health
from .routing import Candidate, Decision, Features
from .upstream import Response, Upstream, UpstreamError
from .usage import CALL
from .wire import (
    ClientError,
    Send,
    error_body,
    last_usage_event,
    respond,
    stream_ended,
    stream_error,
    strip_usage,
    usage_of,
    with_model,
)

if TYPE_CHECKING:
    from .app import EngineStats, Settings

log = logging.getLogger("roundhouse.gateway")
HOT_KINDS = frozenset({"chat", "completions"})  # bodies every family takes as they are
RETRYABLE = {500, 502, 503, 504}
MAX_ATTEMPTS = 4


class Proxying:
    """The Gateway's forwarding half; the state it reads is the Gateway's."""

    settings: Settings
    health: Health
    upstream: Upstream
    demand: Demand
    outstanding: dict[str, int]
    stats: dict[str, EngineStats]
    slot_freed: asyncio.Event

    async def forward(self, send: Send, rid: str, body: dict[str, Any], raw: bytes | None, f: Features,
                      d: Decision, path: str, started: float) -> None:  # fmt: skip
        last_error = "no candidate"
        reason = d.reason
        for attempt, cand in enumerate(d.candidates[:MAX_ATTEMPTS]):
            engine = cand.engine
            if attempt and not self.health.healthy(cand.endpoint):
                continue
            try:
                payload = self.payload(body, raw, f, engine)
            except ValueError as err:
                raise ClientError(400, f"engine {engine.name}: {err}", "unsupported_request") from None
            headers = [("Content-Type", "application/json"), ("X-Request-Id", rid)]
            if engine.api_key:
                headers.append(("Authorization", f"Bearer {engine.api_key}"))
            self.health.attempt(cand.endpoint)
            self.outstanding[cand.endpoint] += 1
            metrics.child(metrics.IN_FLIGHT, engine.name).inc()
            self.demand.request_begin(engine.name)
            try:
                sent = await self.try_one(send, rid, cand, payload, headers, f, path, started, reason)
            finally:
                self.demand.request_end(engine.name)
                self.outstanding[cand.endpoint] -= 1
                metrics.child(metrics.IN_FLIGHT, engine.name).dec()
                self.slot_freed.set()
            if sent is True:
                return
            last_error = str(sent)
            metrics.child(metrics.FAILOVERS, engine.name, last_error.split(":", 1)[0]).inc()
            reason = f"{d.reason},failover"
            log.warning("failover", extra={"request_id": rid, "engine": engine.name, "endpoint": cand.endpoint,
                                           "error": last_error})  # fmt: skip
        metrics.child(metrics.REQUESTS, f.model, "", "", "503").inc()
        if (call := CALL.get()) is not None:
            call.status = 503
        await respond(send, 503, error_body(f"no engine could serve the request ({last_error})", "service_unavailable",
                                            "no_healthy_engine"),
                      {"Retry-After": str(self.settings.retry_after_seconds), "X-Request-Id": rid,
                       "X-Roundhouse-Route-Reason": reason})  # fmt: skip

    @staticmethod
    def payload(body: dict[str, Any], raw: bytes | None, f: Features, engine: Engine) -> bytes:
        """The bytes to send `engine`: the client's own when nothing changes, else the body with the
        engine's model name, in the shape its family takes at that path."""
        if f.kind not in HOT_KINDS:
            body = FAMILIES[engine.family].request_body(f.path, body)
            raw = None
        return raw if raw is not None and engine.upstream_model == f.model else with_model(body, engine)

    async def try_one(self, send: Send, rid: str, cand: Candidate, payload: bytes, headers: list[tuple[str, str]],
                      f: Features, path: str, started: float, reason: str) -> bool | str:  # fmt: skip
        """Forward to one endpoint. True once the answer went to the client; else why it failed
        (nothing has reached the client yet, so the caller may try the next candidate)."""
        engine, t = cand.engine, cand.engine.timeouts
        sent_at = time.perf_counter()
        try:
            resp = await self.upstream.request("POST", cand.endpoint, path, payload, headers, t.connect, t.first_byte)
        except (UpstreamError, TimeoutError) as err:
            self.health.failure(cand.endpoint, type(err).__name__)
            return f"connect:{type(err).__name__}"
        try:
            metrics.child(metrics.UPSTREAM, engine.name).observe(time.perf_counter() - sent_at)
            if resp.status in RETRYABLE:
                self.health.failure(cand.endpoint, f"HTTP {resp.status}")
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
            streaming = "text/event-stream" in out_headers["Content-Type"]
            if not streaming:
                # Small bodies: read it all first, so a failure mid-body can still fail over.
                try:
                    async with asyncio.timeout(t.first_byte):
                        data = await resp.read()
                except (UpstreamError, TimeoutError) as err:
                    self.health.failure(cand.endpoint, type(err).__name__)
                    return f"read:{type(err).__name__}"
                self.first_token(engine, started)
                if resp.status < 400:
                    self.health.success(cand.endpoint)
                    self.count_usage(engine, data)
                elif (shaped := openai_error(engine.name, resp.status, out_headers["Content-Type"], data)) is not None:
                    data, out_headers["Content-Type"] = shaped, "application/json"
                await respond(send, resp.status, data, out_headers)
                self.finish(f, engine, resp.status, started, cand, rid, reason)
                return True
            return await self.stream(send, resp, out_headers, engine, cand, f, started, rid, reason)
        finally:
            resp.release()

    async def stream(self, send: Send, resp: Response, headers: dict[str, str], engine: Engine,
                     cand: Candidate, f: Features, started: float, rid: str, reason: str) -> bool | str:  # fmt: skip
        idle = engine.timeouts.idle
        try:
            async with asyncio.timeout(engine.timeouts.first_byte):
                first = await resp.read_chunk()
        except (UpstreamError, TimeoutError) as err:
            self.health.failure(cand.endpoint, type(err).__name__)
            return f"read:{type(err).__name__}"
        if not first:
            self.health.failure(cand.endpoint, "empty stream")
            return "read:empty stream"
        self.first_token(engine, started)
        call = CALL.get()
        strip = call is not None and call.strip_usage
        pending, usage_chunk = b"", b""
        tail = first[-256:]
        if strip:
            first, pending, dropped = strip_usage(b"", first)
            usage_chunk = dropped or b""
        elif b'"usage"' in first:
            usage_chunk = first
        await send({"type": "http.response.start", "status": resp.status,
                    "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]})  # fmt: skip
        await send({"type": "http.response.body", "body": first, "more_body": True})
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
        except (UpstreamError, TimeoutError) as err:
            ended_cleanly = False
            self.health.failure(cand.endpoint, type(err).__name__)
            log.warning("stream broken", extra={"request_id": rid, "engine": engine.name, "error": type(err).__name__})
        if not ended_cleanly:
            # After the first byte there is no failover: end the stream the way OpenAI clients expect.
            event = stream_error(f.kind, f"engine {engine.name} stopped mid-stream")
            await send({"type": "http.response.body", "body": event, "more_body": False})
            self.finish(f, engine, 502, started, cand, rid, reason)
            return True
        self.health.success(cand.endpoint)
        await send({"type": "http.response.body", "body": pending, "more_body": False})
        if usage_chunk:
            self.count_usage(engine, usage_chunk if strip else last_usage_event(usage_chunk))
        self.finish(f, engine, resp.status, started, cand, rid, reason)
        return True

    def first_token(self, engine: Engine, started: float) -> None:
        ttft = time.perf_counter() - started
        metrics.child(metrics.TTFT, engine.name).observe(ttft)
        self.stats[engine.name].ttft.append(ttft)

    def count_usage(self, engine: Engine, data: bytes) -> None:
        prompt, completion = usage_of(data)
        if (call := CALL.get()) is not None:
            call.prompt_tokens, call.completion_tokens = prompt, completion
        metrics.child(metrics.TOKENS, engine.name, "prompt").inc(prompt)
        metrics.child(metrics.TOKENS, engine.name, "completion").inc(completion)
        self.stats[engine.name].tokens.append((time.monotonic(), completion))

    def finish(self, f: Features, engine: Engine, status: int, started: float, cand: Candidate, rid: str,
               reason: str) -> None:  # fmt: skip
        elapsed = time.perf_counter() - started
        if (call := CALL.get()) is not None:
            call.engine, call.status = engine.name, status
        metrics.child(metrics.REQUESTS, f.model, engine.name, engine.family.value, str(status)).inc()
        metrics.child(metrics.DURATION, engine.family.value).observe(elapsed)
        log.info("request", extra={"request_id": rid, "model": f.model, "engine": engine.name,
                                   "endpoint": cand.endpoint, "status": status, "reason": reason,
                                   "stream": f.stream, "duration_ms": round(elapsed * 1000, 2)})  # fmt: skip

"""Stage five, account: how a request ended, counted once: the metrics, the admin page's figures, the
request's log line, and what the caller's key used (usage rows, token limits, the monthly budget)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from roundhouse_gateway import metrics
from roundhouse_gateway.compare.window import Answer, Comparison
from roundhouse_gateway.engines.catalog import Catalog, Engine
from roundhouse_gateway.engines.fleet import EngineStats
from roundhouse_gateway.keys.auth import Auth
from roundhouse_gateway.keys.keys import Identity
from roundhouse_gateway.keys.usage import Call
from roundhouse_gateway.routing.route import Decision, Features

log = logging.getLogger("roundhouse.gateway")


@dataclass
class Outcome:
    """How a forwarded request ended: who answered (None: no engine could), with what, and what it used."""

    engine: Engine | None
    endpoint: str
    status: int
    reason: str
    ttft: float | None = None  # seconds from the request's start to the engine's first byte
    prompt_tokens: int = 0
    completion_tokens: int = 0
    counted: bool = False  # the engine reported its usage
    answer: bytes | None = None  # what the engine answered, kept when a copy's answer is compared with it


def record(o: Outcome, f: Features, call: Call | None, stats: dict[str, EngineStats], rid: str,
           started: float) -> None:  # fmt: skip
    """Metrics, the admin page's figures and the log line of a forwarded request."""
    if call is not None:
        call.status = o.status
    if o.engine is None:  # no engine could serve it
        metrics.child(metrics.REQUESTS, f.model, "", "", str(o.status)).inc()
        return
    engine, st = o.engine, stats[o.engine.name]
    if o.ttft is not None:
        metrics.child(metrics.TTFT, engine.name).observe(o.ttft)
        st.ttft.append(o.ttft)
    if o.counted:
        if call is not None:
            call.prompt_tokens, call.completion_tokens = o.prompt_tokens, o.completion_tokens
        metrics.child(metrics.TOKENS, engine.name, "prompt").inc(o.prompt_tokens)
        metrics.child(metrics.TOKENS, engine.name, "completion").inc(o.completion_tokens)
        st.tokens.append((time.monotonic(), o.completion_tokens))
    elapsed = time.perf_counter() - started
    if call is not None:
        call.engine = engine.name
    metrics.child(metrics.REQUESTS, f.model, engine.name, engine.family.value, str(o.status)).inc()
    metrics.child(metrics.DURATION, engine.family.value).observe(elapsed)
    if log.isEnabledFor(logging.INFO):  # the line's fields cost more than the check
        log.info("request", extra={"request_id": rid, "model": f.model, "engine": engine.name,
                                   "endpoint": o.endpoint, "status": o.status, "reason": o.reason, "stream": f.stream,
                                   "duration_ms": round(elapsed * 1000, 2)})  # fmt: skip


def decided(d: Decision) -> None:
    """Count a routing decision by each of its reasons."""
    for part in d.reason.split(","):
        metrics.child(metrics.DECISIONS, part.split(":", 1)[0]).inc()


def refused(f: Features, status: int, code: str, call: Call | None, rid: str) -> None:
    """Metrics and the log line of a request that routing refused (no engine saw it)."""
    # An unknown model is the client's string: it must not become a new metric series per typo.
    model_label = "" if code == "model_not_found" else f.model
    if call is not None:
        call.status = status
    metrics.child(metrics.REQUESTS, model_label, "", "", str(status)).inc()
    log.info("request", extra={"request_id": rid, "model": f.model, "status": status, "reason": code})


def charge(who: Identity, call: Call, auth: Auth, catalog: Catalog) -> None:
    """Count what a request used against its key: usage rows, metrics, token limits, the monthly budget
    (in memory now, in the state store with the next batch: never a wait here)."""
    model = call.model if call.model in catalog.served else ""
    auth.state.charge(who, model, call.engine, call.status or 499, call.prompt_tokens, call.completion_tokens)


def compared(o: Outcome, f: Features, comparison: Comparison, started: float) -> None:
    """An answer to a model whose arms or shadows are compared: its figures, for /admin/compare."""
    if o.engine is not None:
        comparison.answered(f.model, o.engine.name, "arm", Answer(time.time(), o.status, o.ttft,
                                                                  time.perf_counter() - started,
                                                                  o.completion_tokens))  # fmt: skip

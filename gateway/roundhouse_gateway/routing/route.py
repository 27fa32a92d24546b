"""route(request, catalog, load) -> ordered candidates and the reason. Pure: no I/O, no clock.

Order of the rules (DESIGN.md, "The gateway's job"): model, mode, per-request override,
capabilities, context length, task type, health, then load (least outstanding per endpoint,
weighted, priority first). The first candidate is tried first; the rest are for failover.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field

from roundhouse_api import Family, Mode
from roundhouse_api.families import FAMILIES
from roundhouse_gateway.engines.catalog import CAPABILITY_JSON_SCHEMA, CAPABILITY_TOOLS, Catalog, Engine
from roundhouse_gateway.routing import split
from roundhouse_gateway.routing.affinity import keyed, pick

FAMILY_ALIASES = {"gguf": Family.LLAMACPP, "llama.cpp": Family.LLAMACPP, "llama-cpp": Family.LLAMACPP}


@dataclass(frozen=True)
class Features:
    """What routing needs from a request, parsed once."""

    model: str
    kind: str = "chat"  # chat | completions | embeddings
    stream: bool = False
    tools: bool = False
    json_schema: bool = False
    prompt_tokens: int = 0
    max_tokens: int = 0
    override: str | None = None  # engine name or family, from X-Roundhouse-Engine or body "engine"
    task: str | None = None
    tokens: str = "estimate"  # how prompt_tokens was had: "estimate" (characters) or "exact" (an engine counted)
    prefix: int | None = None  # hash of the prompt prefix (affinity.prefix_key)
    near_limit: bool = False  # the estimate was close to a context size: the reason says which count decided
    engines: tuple[str, ...] = ()  # the caller's key may use only engines matching these globs (none: any)
    path: str = ""  # the OpenAI path asked for: only families that serve it are candidates ("": any)
    user: str | None = None  # who the request is for (its `user` field, else the key's name): A/B arms stick to it


@dataclass(frozen=True)
class Candidate:
    engine: Engine
    endpoint: str


@dataclass
class Decision:
    candidates: list[Candidate] = field(default_factory=list)
    reason: str = ""
    # When nothing can be tried: an OpenAI-style error (status, code, message).
    error: tuple[int, str, str] | None = None
    # The mode is switching and the family that would serve is not ready yet: wait for it.
    hold_for: Family | None = None
    # Mode onDemand: the engine to start for this request (it waits while the operator swaps).
    activate: str | None = None
    retry_after: int | None = None  # seconds, for a 503 whose wait can be estimated
    compare: tuple[str, ...] = ()  # X-Roundhouse-Engine: ab — the other arms, which get a copy to compare


Healthy = Callable[[str], bool]
Tier = tuple[bool, bool, int, int]  # at its cap, not preferred for the task, -priority, context rank
Outstanding = Callable[[str], float]  # requests in flight at an endpoint (plus what its engine says is queued)
Holds = Callable[[Engine, str, str], bool]  # (engine, endpoint, model): whether that replica serves the model


def route(f: Features, catalog: Catalog, healthy: Healthy, outstanding: Outstanding, turn: int = 0,
          holds: Holds | None = None) -> Decision:  # fmt: skip
    """Candidates for one request, best first, with the reason for the choice. `turn` rotates the
    order among equals, so equally loaded endpoints take turns; `holds` says whether a replica serves
    the requested model (an adapter loaded at run time: once it lists it; default: every replica)."""
    serving = list(catalog.serving.get(f.model, ()))
    if f.engines:  # engines the key may not use do not serve it: to that caller, they are not there
        serving = [e for e in serving if any(fnmatch.fnmatchcase(e.name, p) for p in f.engines)]
    if not serving:
        where = "you do not have access to it" if f.engines else "is not served here"
        return Decision(error=(404, "model_not_found", f"The model `{f.model}` does not exist or {where}."))
    if f.path:
        able = [e for e in serving if FAMILIES[e.family].serves(f.path)]
        if not able:
            titles = " and ".join(sorted({FAMILIES[e.family].title for e in serving}))
            return Decision(error=(400, "unsupported_endpoint",
                                   f"The model `{f.model}` is served by {titles} engines, which do not serve"
                                   f" {f.path}."))  # fmt: skip
        serving = able
    reasons: list[str] = []
    mode = catalog.mode
    pool = [e for e in serving if mode.active(e)]
    ab, primary = split.parse_ab(f.override)
    if (f.override and f.override.lower() != "auto" and not ab) or primary:
        picked, why = _override(primary or f.override or "", serving)
        if not picked:
            return Decision(error=(400, "invalid_engine", why))
        pool = picked  # an explicit choice may name an engine the mode has switched off
        reasons.append(f"ab:{primary}" if ab else f"override:{f.override}")
    elif ab:
        reasons.append("ab")
    if not pool:
        return _switched_off(f, serving, catalog)
    rules = mode.rules
    if rules.capabilities:
        pool = _capabilities(f, pool, reasons)
    if rules.context_length:
        pool, err = _context(f, pool, reasons)
        if f.near_limit:
            reasons.append(f"tokens:{f.tokens}")
        if err:
            return Decision(error=err, reason=",".join(reasons))
    task_family = rules.task_families.get(f.task) if f.task else None
    ready = [e for e in pool if e.ready and e.endpoints]
    if not ready and mode.switching and mode.policy.during_switch == "reject":
        return Decision(error=(503, "engine_switching", "the engine mode is switching; try again shortly"))
    by_context = any(r.startswith("context:") for r in reasons)
    if not ready and mode.mode == Mode.ON_DEMAND:
        return _activate(pool, reasons)
    if not ready:
        incoming = next((e.family for e in pool if mode.switching), None)
        if incoming is not None and mode.policy.during_switch == "hold":
            return Decision(hold_for=incoming, reason="hold:switching")
        return _fallback(pool, catalog, healthy, outstanding, "no ready engine")
    by_load = rules.balancing == "leastOutstanding"
    # An adapter loaded at run time: only the replicas that list it (asked only for such a request).
    loading = holds is not None and any(e.runtime_adapters and f.model in e.adapter for e in ready)
    usable = healthy
    if loading and holds is not None:
        owner = {ep: e for e in ready for ep in e.endpoints}
        usable = lambda ep: healthy(ep) and holds(owner[ep], ep, f.model)  # noqa: E731
    candidates, tiers = _rank(ready, usable, outstanding, task_family, f.task, reasons, by_context, turn, by_load)
    if not candidates and loading:
        return Decision(error=(503, "adapter_loading", f"adapter `{f.model}` is not loaded on a ready replica yet;"
                               " try again shortly"), reason="adapter-loading", retry_after=2)  # fmt: skip
    if not candidates and mode.mode == Mode.ON_DEMAND:
        return _activate(ready, reasons)  # started, not yet answering its probes
    if not candidates:
        if mode.switching and mode.policy.during_switch == "hold":
            return Decision(hold_for=pool[0].family, reason="hold:switching")
        return _fallback(pool, catalog, healthy, outstanding, "no healthy endpoint")
    if not reasons:
        reasons.append("model")
    if f.user is not None and not primary:
        candidates = _split(f.user, candidates, tiers, reasons)
    if len(candidates) > 1 and f.prefix is not None and _affinity_on(candidates[0].engine, rules.prefix_affinity):
        # An adapter's requests have a KV cache of their own: the key is the prefix's and the adapter's.
        key = f.prefix if f.model not in candidates[0].engine.adapter else keyed(f.prefix, f.model)
        candidates = _prefix_affinity(key, candidates, outstanding, rules.prefix_affinity_epsilon, reasons)
    elif len(candidates) > 1:
        reasons.append("least-loaded" if by_load else "round-robin")
    else:
        reasons.append("only-candidate")
    compare = _others(candidates[0].engine, serving, catalog) if ab else ()
    return Decision(candidates=candidates, reason=",".join(reasons), compare=compare)


def _others(chosen: Engine, serving: list[Engine], catalog: Catalog) -> tuple[str, ...]:
    """The arms an A/B request is compared with: the other engines serving its name that can answer."""
    return tuple(e.name for e in serving if e is not chosen and e.ready and e.endpoints and catalog.mode.active(e))


def _split(user: str, candidates: list[Candidate], tiers: list[Tier], reasons: list[str]) -> list[Candidate]:
    """The user's arm first among the best-ranked engines (those equal to the first before load: cap,
    task, priority, context), the rest kept in order for failover. Only where an arm sets its weight:
    engines that set none are a pool, shared by load."""
    if len(candidates) < 2:
        return candidates
    tier = [c.engine for c, rank in zip(candidates, tiers, strict=True) if rank == tiers[0]]
    arms = {e.name: e.weight for e in tier}
    if len(arms) < 2 or not any(e.weighted for e in tier):
        return candidates
    chosen = split.arm(user, arms.items())
    if chosen is None:
        return candidates
    reasons.append(f"split:{chosen}")
    return [*(c for c in candidates if c.engine.name == chosen), *(c for c in candidates if c.engine.name != chosen)]


def _affinity_on(engine: Engine, rule: bool | None) -> bool:
    return FAMILIES[engine.family].caches_prompts if rule is None else rule


def _prefix_affinity(prefix: int, candidates: list[Candidate], outstanding: Outstanding, epsilon: float,
                     reasons: list[str]) -> list[Candidate]:  # fmt: skip
    """The best engine's replicas under its cap, by consistent hashing with bounded load; the rest
    keep their order, for failover."""
    top = candidates[0].engine
    group = [
        c
        for c in candidates
        if c.engine is top and not (top.max_concurrency is not None and outstanding(c.endpoint) >= top.max_concurrency)
    ]
    if len(group) < 2:
        reasons.append("least-loaded")
        return candidates
    chosen, skipped = pick(prefix, [c.endpoint for c in group], outstanding, epsilon)
    reasons.append("prefix-affinity" if not skipped else f"prefix-affinity:spill{skipped}")
    first = next(c for c in group if c.endpoint == chosen)
    return [first, *(c for c in candidates if c is not first)]


def _activate(pool: list[Engine], reasons: list[str]) -> Decision:
    """Mode onDemand: the engine to start: the smallest context that fits, then the highest priority; an
    engine being drained only when nothing else serves."""

    def rank(e: Engine) -> tuple[bool, bool, int, int]:
        # The smallest context first (big variants hold more GPUs), then priority.
        return e.phase == "Failed", e.phase == "Draining", e.context_length or 1 << 30, -e.priority

    target = min(pool, key=rank)  # min() keeps the first of equals
    if target.phase == "Failed":  # waiting would not help: say why now
        why = f"engine {target.name} failed: {target.message or 'see its status'}"
        return Decision(error=(503, "engine_failed", why), reason=",".join([*reasons, f"failed:{target.name}"]))
    reasons.append(f"activate:{target.name}")
    return Decision(hold_for=target.family, activate=target.name, reason=",".join(reasons))


def _override(value: str, serving: list[Engine]) -> tuple[list[Engine], str]:
    by_name = [e for e in serving if e.name == value]
    if by_name:
        return by_name, ""
    family = FAMILY_ALIASES.get(value.lower()) or next((f for f in Family if f.value == value.lower()), None)
    if family is None:
        return [], f"engine {value!r} is neither an engine serving this model nor a family (vllm, llamacpp, ...)"
    picked = [e for e in serving if e.family == family]
    return picked, "" if picked else f"no {family.value} engine serves this model"


def _switched_off(f: Features, serving: list[Engine], catalog: Catalog) -> Decision:
    mode = catalog.mode
    families = sorted({e.family.value for e in serving})
    if mode.switching and mode.policy.during_switch == "hold" and any(e.family.value == mode.mode for e in serving):
        return Decision(hold_for=Family(str(mode.mode)), reason="hold:switching")
    message = f"`{f.model}` is served only by {'/'.join(families)}, which engine mode {mode.mode} has switched off"
    return Decision(error=(503, "engine_switched_off", message))


def _capabilities(f: Features, pool: list[Engine], reasons: list[str]) -> list[Engine]:
    needed = [c for c, want in ((CAPABILITY_TOOLS, f.tools), (CAPABILITY_JSON_SCHEMA, f.json_schema)) if want]
    if not needed:
        return pool
    declared = [e for e in pool if all(c in e.capabilities for c in needed)]
    if declared:
        reasons.append("capability:" + "+".join(needed))
        return declared
    return pool  # nobody declares it: let the engines answer for themselves


def _context(f: Features, pool: list[Engine], reasons: list[str]) -> tuple[list[Engine], tuple[int, str, str] | None]:
    need = f.prompt_tokens + f.max_tokens
    if not need:
        return pool, None
    fits = [e for e in pool if e.context_length is None or e.context_length >= need]
    if not fits:
        largest = max(e.context_length or 0 for e in pool)
        return [], (400, "context_length_exceeded",
                    f"This request needs {'about ' if f.tokens == 'estimate' else ''}{need} tokens (prompt"
                    f" {f.prompt_tokens} + max_tokens {f.max_tokens}); "
                    f"the largest context among engines serving `{f.model}` is {largest} tokens.")  # fmt: skip
    if len(fits) < len(pool):
        reasons.append(f"context:{need}")
        # Smallest window that fits first: keep the large ones for the requests that need them.
        fits.sort(key=lambda e: e.context_length or 1 << 30)
    return fits, None


def _rank(
    pool: list[Engine], healthy: Healthy, outstanding: Outstanding, task_family: Family | None, task: str | None,
    reasons: list[str], by_context: bool, turn: int, by_load: bool = True,
) -> tuple[list[Candidate], list[Tier]]:  # fmt: skip
    """Best first: under its cap, preferred for the task, priority, smallest fitting context (for long
    requests), then least outstanding per unit of weight; with each candidate's rank before load."""
    scored: list[tuple[bool, bool, int, int, float, int, Candidate]] = []
    for order, e in enumerate(pool):
        context_rank = order if by_context else 0
        prefers = (task_family is not None and e.family == task_family) or (task is not None and task in e.task_types)
        for ep in e.endpoints:
            if not healthy(ep):
                continue
            load = outstanding(ep)
            capped = e.max_concurrency is not None and load >= e.max_concurrency
            share = load / max(e.weight, 1) if by_load else 0.0
            scored.append((capped, not prefers, -e.priority, context_rank, share, len(scored), Candidate(e, ep)))
    if task and any(not s[1] for s in scored):
        reasons.append(f"task:{task}")
    if any(s[0] for s in scored) and not all(s[0] for s in scored):
        reasons.append("concurrency-overflow")
    n = len(scored)
    scored.sort(key=lambda s: (*s[:5], (s[5] - turn) % max(n, 1)))
    return [s[-1] for s in scored], [s[:4] for s in scored]


def _fallback(pool: list[Engine], catalog: Catalog, healthy: Healthy, outstanding: Outstanding, why: str) -> Decision:
    names = [n for e in pool for n in e.fallback]
    chain = [e for n in dict.fromkeys(names) if (e := catalog.by_name(n)) and e.ready and catalog.mode.active(e)]
    candidates = [Candidate(e, ep) for e in chain for ep in e.endpoints if healthy(ep)]
    if candidates:
        return Decision(candidates=candidates, reason=f"fallback:{candidates[0].engine.name}")
    return Decision(error=(503, "no_healthy_engine", f"{why} for this model; try again shortly"))

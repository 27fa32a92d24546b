"""Which engine status may wait for the settling time instead of being written at once. Pure.

Why: while an engine comes up or its pods go away, each pod event gave a status write (Pending,
Starting, a count, a message): 3.5 writes per engine in a 100-engine switch, against the floor's one
apply, on the API server the switch waits for. Within the settling time that follows an apply, only
what a user or a gateway acts on is written at once; the rest is written once, at its end.
"""

from __future__ import annotations

from typing import Any

from roundhouse_api import EngineStatus, Phase

SETTLING_PHASES = (Phase.PENDING, Phase.STARTING)
# Phases an engine is coming up from: Pending or Starting after these says nothing a user acts on yet
# (no gateway routes to it either way); after Ready or Degraded it says the engine stopped serving.
COMING_UP_FROM = (None, Phase.STANDBY, Phase.PENDING, Phase.STARTING)
# Differences that are progress: the counts, and the words that go with them.
COUNTS = ("replicas", "readyReplicas", "ready", "message")


def news(written: EngineStatus | None, new: EngineStatus) -> bool:
    """Whether `new` says something that must go at once: a generation acted on, a phase that is not
    Pending or Starting, the replicas stopping, or a condition (other than Ready) turning False or
    saying a new reason for being False."""
    if written is not None and (new.observed_generation != written.observed_generation
                                or new.stopping != written.stopping):  # fmt: skip
        return True
    if (written is None or new.phase != written.phase) and new.phase not in SETTLING_PHASES:
        return True
    was = {c.type: (c.status, c.reason, c.message) for c in (written.conditions if written else [])}
    return any(c.status == "False" and c.type != "Ready" and was.get(c.type) != (c.status, c.reason, c.message)
               for c in new.conditions)  # fmt: skip


def progress_only(written: EngineStatus, new: EngineStatus) -> bool:
    """Whether `new` differs from `written` only in counts and their words (a pod placed or gone
    included: Scheduled between True and Unknown)."""

    def gist(s: EngineStatus) -> dict[str, Any]:
        wire = s.wire()
        conditions = []
        for c in wire.get("conditions") or []:
            status = "Known" if c["type"] == "Scheduled" and c["status"] != "False" else c["status"]
            keep = c["status"] == "False" and c["type"] != "Ready"  # a refusal's words are not progress
            conditions.append({"type": c["type"], "status": status, "reason": c.get("reason") if keep else None,
                               "message": c.get("message") if keep else None})  # fmt: skip
        return {**{k: v for k, v in wire.items() if k not in COUNTS}, "conditions": conditions}

    return gist(written) == gist(new)


def may_wait(written: EngineStatus | None, new: EngineStatus) -> bool:
    """Whether `new`, computed within the settling time, may be written at its end rather than now:
    an engine coming up says Pending or Starting, or only its counts moved."""
    if news(written, new):
        return False
    if new.phase in SETTLING_PHASES and (written is None or written.phase in COMING_UP_FROM):
        return True
    return written is not None and progress_only(written, new)

"""What the controller writes back: engine and mode status (patched only when they change), the Events
a user must see, and the switch gauges the stuck-switch alert reads."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

from roundhouse_api import (
    EngineMode,
    EngineModeStatus,
    EngineStatus,
    Family,
    InferenceEngine,
    ModePhase,
    Phase,
    SwitchPolicy,
)
from roundhouse_api.ondemand import Budget, DemandPlan, DemandView

from . import metrics
from .kube import Kube
from .ondemand_status import on_demand_status
from .plan import ModePlan
from .status import condition, keep_transition_times
from .store import Store
from .switch import mode_status, switch_starting

log = logging.getLogger("roundhouse.operator")
# Conditions whose turn to False a user should see in `kubectl describe`, with the Event reason.
# ("": the condition's own reason, e.g. MissingFallback or MissingSecret.)
TRANSITION_EVENTS = {"ConfigValid": "InvalidSpec", "Scheduled": "Unschedulable", "References": ""}
# Conditions whose every new False message is an Event of its own (a refusal, an adapter that failed to load).
MESSAGE_EVENTS = {"Applied", "AdaptersLoaded"}


# A switch's progress (its message, its engines' phases) is rewritten at most this often: each pass
# of a 100-engine switch had a new count to say, 45 writes of the 400 a switch made on the API server
# it waits for. A change of phase or of the mode in force is written at once.
PROGRESS_EVERY = 1.0


def progress_only(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether a mode status differs from the last one written only in what it says of its progress."""

    def gist(s: dict[str, Any]) -> dict[str, Any]:
        conditions = [{k: v for k, v in c.items() if k != "message"} for c in s.get("conditions") or []]
        return {**{k: v for k, v in s.items() if k not in ("message", "engines")}, "conditions": conditions}

    return gist(old) == gist(new)


def status_patch(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """A merge patch from `old` to `new`: fields that disappeared are nulled, not left behind."""
    return {**{k: None for k in (old or {}) if k not in new}, **new}


class StatusWriting:
    """The Controller's writing half; the state it reads is the Controller's."""

    store: Store
    kube: Kube
    progress_every: float
    _mode_written: dict[tuple[str, str], float]  # mode -> loop time its status was last written

    _progress_due: dict[tuple[str, str], asyncio.TimerHandle]  # modes whose held-back progress is due

    def mark_mode(self, namespace: str) -> None: ...

    def _progress(self, key: tuple[str, str]) -> None:
        self._progress_due.pop(key, None)
        self.mark_mode(key[0])

    async def _write_engine_status(
        self, raw: dict[str, Any], status: EngineStatus, previous: EngineStatus | None
    ) -> None:
        """Patch the status if it changed; post an Event when a condition a user must see turns False."""
        new = status.wire()
        if previous is not None and previous.wire() == new:
            return
        meta = raw["metadata"]
        patch = status_patch(raw.get("status"), new)
        stored = await asyncio.to_thread(
            self.kube.patch_status, "InferenceEngine", meta["namespace"], meta["name"], patch
        )
        self.store.put("InferenceEngine", stored)
        if previous is None or previous.phase != status.phase:
            metrics.PHASE_CHANGES.labels(phase=status.phase.value if status.phase else "").inc()
            log.info("engine phase", extra={"engine": f"{meta['namespace']}/{meta['name']}",
                                            "phase": status.phase, "reason": status.message})  # fmt: skip
        old = {c.type: (c.status, c.message) for c in (previous.conditions if previous else [])}
        for cond in status.conditions:
            if cond.status != "False":
                continue
            if cond.type in MESSAGE_EVENTS and old.get(cond.type) != ("False", cond.message):
                # Once per distinct refusal: a new message is news, a retry of the same one is not.
                await asyncio.to_thread(self.kube.event, raw, "Warning", cond.reason, cond.message)
            elif (reason := TRANSITION_EVENTS.get(cond.type)) is not None and old.get(cond.type, ("",))[0] != "False":
                await asyncio.to_thread(self.kube.event, raw, "Warning", reason or cond.reason, cond.message)

    async def _write_invalid(
        self, raw: dict[str, Any], error: str, previous: EngineStatus | None, now: datetime
    ) -> None:
        """A spec the models refuse: ConfigValid=False and phase Failed; nothing else is touched."""
        gen = int(raw["metadata"].get("generation", 0))
        conditions = keep_transition_times(
            [condition("ConfigValid", False, "InvalidSpec", error, gen, now)], previous.conditions if previous else []
        )
        status = EngineStatus(phase=Phase.FAILED, message=error, observed_generation=gen, conditions=conditions)
        await self._write_engine_status(raw, status, previous)

    def _switch_gauges(self, mode: EngineMode, status: EngineModeStatus, now: datetime) -> None:
        """How long the switch has run, and how long it may (the stuck-switch alert compares them)."""
        labels = (mode.metadata.namespace, mode.metadata.name)
        started = status.switch_started_at if status.phase == ModePhase.SWITCHING else None
        metrics.SWITCH_AGE.labels(*labels).set((now - started).total_seconds() if started else 0)
        policy = mode.spec.switch_policy or SwitchPolicy()
        metrics.SWITCH_BOUND.labels(*labels).set(policy.drain_seconds + policy.max_hold_seconds)

    async def _write_mode_status(
        self, mode: EngineMode, p: ModePlan, engines: dict[str, tuple[Family, EngineStatus, bool]], now: datetime,
        on_demand: tuple[DemandPlan, Budget, list[DemandView]] | None = None,
        parsed: dict[str, tuple[dict[str, Any], InferenceEngine | None, str | None]] | None = None,
    ) -> None:  # fmt: skip
        if on_demand is not None:
            starting = [g.name for g in (mode.status.engines if mode.status else []) if g.state == "starting"]
            times = {n: self.store.pod_times(mode.metadata.namespace, n) for n in starting}
            status, events = on_demand_status(mode, *on_demand, engines, now, times)
            for e in on_demand[0].events:  # each step on the engine too, with its timings
                metrics.ON_DEMAND_STEPS.labels(step=e.reason).inc()
                if parsed and e.engine in parsed:
                    await asyncio.to_thread(self.kube.event, parsed[e.engine][0], "Normal", e.reason, e.message)
            for event in events:
                if event.reason == "Activated" and event.seconds is not None:
                    metrics.ACTIVATION_SECONDS.observe(event.seconds)
                    for phase, seconds in event.phases:
                        metrics.ACTIVATION_PHASE_SECONDS.labels(phase=phase).observe(seconds)
        else:
            # Pod times only while a switch is under way: only its completion reads them.
            switching = switch_starting(mode) or (mode.status is not None and mode.status.phase == ModePhase.SWITCHING)
            active = [n for n, e in p.engines.items() if e.active] if switching else []
            status, events = mode_status(
                mode, p, engines, now, {n: self.store.pod_times(mode.metadata.namespace, n) for n in active}
            )
        self._switch_gauges(mode, status, now)
        old = mode.status.wire() if mode.status else None
        new = status.wire()
        if old == new:
            return
        meta = mode.metadata
        key, clock = (str(meta.namespace), meta.name), asyncio.get_running_loop().time()
        since = clock - self._mode_written.get(key, float("-inf"))
        if on_demand is None and old is not None and since < self.progress_every and progress_only(old, new):
            if key not in self._progress_due:  # the latest progress, a little later (no engine reconciled)
                loop = asyncio.get_running_loop()
                self._progress_due[key] = loop.call_later(self.progress_every - since + 0.01, self._progress, key)
            return
        self._mode_written[key] = clock
        body = {"apiVersion": mode.api_version, "kind": "EngineMode", "metadata": meta.model_dump()}
        stored = await asyncio.to_thread(
            self.kube.patch_status, "EngineMode", meta.namespace, meta.name, status_patch(old, new)
        )
        self.store.put("EngineMode", stored)
        for event in events:
            await asyncio.to_thread(self.kube.event, body, event.type, event.reason, event.message)
            if event.reason == "SwitchCompleted" and status.last_switch_seconds is not None:
                metrics.SWITCHES.inc()
                metrics.SWITCH_SECONDS.observe(status.last_switch_seconds)
                for phase, seconds in event.phases:
                    metrics.SWITCH_PHASE_SECONDS.labels(phase=phase).observe(seconds)
        log.info("engine mode", extra={"mode": f"{meta.namespace}/{meta.name}", "phase": status.phase,
                                       "activeMode": status.active_mode, "reason": status.message})  # fmt: skip

"""Standalone spec.autoscaling: more processes of one engine when its load asks and the budget allows.

The same autoscaler (roundhouse_api.autoscaler) and the same shared plan as the operator's decide;
the readings are this gateway's own counts (requests in flight on the engine and waiting for it),
sampled when they change and every SAMPLE_REFRESH otherwise. The engine's first process is the one
local.py starts on demand; the others ("extras") run the same command line on ports of their own. An
extra that is no longer wanted leaves the catalog first (no new requests), gets drainSeconds at most
for those running on it to end, then SIGTERM; one that exits by itself is just dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from roundhouse_api import InferenceEngine
from roundhouse_api.autoscaler import Reading, Scale, autoscale
from roundhouse_api.demand import REPORT_TTL
from roundhouse_gateway.sources.localcmd import LOOPBACK, CommandError, local_command, spawn, stop_process

log = logging.getLogger("roundhouse.gateway.local")
SAMPLE_REFRESH = 5.0  # well within REPORT_TTL: an unchanged load keeps counting
HEALTH_POLL = 0.25


@dataclass
class Extra:
    """One more process of an engine."""

    port: int
    process: asyncio.subprocess.Process | None = None
    ready: bool = False
    stopping: bool = False

    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None


@dataclass
class Loads:
    """Each autoscaled engine's load over time, and the autoscaler's last answer."""

    since: float = field(default_factory=time.time)
    series: dict[str, list[Reading]] = field(default_factory=dict)
    answers: dict[str, int] = field(default_factory=dict)  # engine -> the replicas last answered

    def sample(self, name: str, running: int, waiting: int, now: float, horizon: float) -> None:
        series = self.series.setdefault(name, [])
        last = series[-1] if series else None
        if last is None or (last.running, last.waiting) != (running, waiting) or now - last.at >= SAMPLE_REFRESH:
            series.append(Reading("local", now, running, waiting))
        oldest = now - horizon - REPORT_TTL
        while len(series) > 1 and series[1].at < oldest:  # the one before the window still says what it began at
            series.pop(0)

    def want(self, ie: InferenceEngine, now: float) -> Scale:
        """The autoscaler's answer for an engine with spec.autoscaling."""
        policy = ie.spec.autoscaling
        assert policy is not None
        name = ie.metadata.name
        current = self.answers.get(name, 1)
        scale = autoscale(policy, current, self.series.get(name, []), now, self.since)
        if scale.replicas != current:
            log.info("autoscale", extra={"engine": name, "from": current, "to": scale.replicas, "why": scale.reason})
        self.answers[name] = scale.replicas
        return scale


async def start_extra(ie: InferenceEngine, extra: Extra, cache_dir: str, log_path: os.PathLike[str],
                      http: httpx.AsyncClient, max_wait: float) -> bool:  # fmt: skip
    """Run one more process of `ie` on `extra.port` and wait for its health endpoint; whether it is ready."""
    try:
        cmd = local_command(ie, extra.port, cache_dir)
    except CommandError as err:
        log.error("extra process not started", extra={"engine": ie.metadata.name, "error": str(err)})
        return False
    try:
        extra.process = await spawn(cmd, Path(log_path), f"extra process on port {extra.port}")
    except OSError as err:
        log.error("extra process not started", extra={"engine": ie.metadata.name, "error": repr(err)})
        return False
    url = f"http://{LOOPBACK}:{extra.port}{cmd.health_path}"
    started = time.monotonic()
    while extra.alive() and not extra.stopping and time.monotonic() - started < max_wait:
        with contextlib.suppress(httpx.HTTPError):
            if (await http.get(url)).status_code < 300:
                extra.ready = True
                log.info("extra process ready", extra={"engine": ie.metadata.name, "port": extra.port,
                                                       "seconds": round(time.monotonic() - started, 3)})  # fmt: skip
                return True
        await asyncio.sleep(HEALTH_POLL)
    return False


async def stop_extra(extra: Extra, drain: float, busy: Callable[[], bool], timeout: float) -> None:
    """SIGTERM once the engine has nothing in flight or `drain` seconds have passed (the caller has taken
    the process out of the catalog first), SIGKILL `timeout` seconds later."""
    extra.stopping, extra.ready = True, False
    deadline = time.monotonic() + drain
    while busy() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    proc = extra.process
    if proc is None:
        return
    await stop_process(proc, timeout)

"""Graceful shutdown: on SIGTERM the gateway reports not ready at once, keeps accepting for DELAY
seconds (Service endpoints and load balancers still send a terminating pod new connections for a
few seconds), then stops accepting; requests in flight get until DEADLINE seconds after the signal,
when streams still running end with an OpenAI error event and `[DONE]` and other requests are
answered 503. A second signal exits at once."""

from __future__ import annotations

import asyncio
import logging
import time
from types import FrameType
from typing import Any

import uvicorn

log = logging.getLogger("roundhouse.gateway")
DELAY, DEADLINE = 5.0, 25.0


class Drain:
    """What the request handlers need to know about a shutdown under way."""

    def __init__(self) -> None:
        self.since: float | None = None  # monotonic time of the signal
        self.expired = False
        self.tasks: set[asyncio.Task[Any]] = set()  # requests in flight

    @property
    def draining(self) -> bool:
        return self.since is not None

    def begin(self) -> None:
        self.since = time.monotonic()
        log.info("draining", extra={"inFlight": len(self.tasks)})

    def expire(self) -> None:
        """The deadline: every request still in flight is cancelled; the handlers answer for it."""
        self.expired = True
        if self.tasks:
            log.warning("drain deadline: ending requests in flight", extra={"inFlight": len(self.tasks)})
        for task in list(self.tasks):
            task.cancel()


class DrainingServer(uvicorn.Server):
    """uvicorn, but a first SIGTERM or SIGINT drains (see the module) instead of stopping at once."""

    def __init__(self, config: uvicorn.Config, drain: Drain, delay: float = DELAY, deadline: float = DEADLINE) -> None:
        # uvicorn's own grace must outlast ours, or it cancels the requests before they are answered.
        config.timeout_graceful_shutdown = int(max(1.0, deadline - delay) + 5)
        super().__init__(config)
        self.drain, self.delay, self.deadline = drain, delay, max(deadline, delay)
        self.loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: Any = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain.draining or self.loop is None:
            super().handle_exit(sig, frame)  # a second signal: stop now
            if self.drain.draining:
                self.force_exit = True
            return
        self._captured_signals.append(sig)  # uvicorn re-raises it once the server is down
        self.loop.call_soon_threadsafe(self._begin)

    def _begin(self) -> None:
        assert self.loop is not None
        self.drain.begin()
        self.loop.call_later(self.delay, self._stop_accepting)
        self.loop.call_later(self.deadline, self.drain.expire)

    def _stop_accepting(self) -> None:
        log.info("drain: no new connections", extra={"inFlight": len(self.drain.tasks)})
        self.should_exit = True

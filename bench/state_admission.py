"""The state keeper's admission alone, in process: CPU per admission with the memory store and with a
redis-server on loopback (core 1; this process on core 0), at 1, 8 and 64 admissions in flight. What a
request of a limited key costs the gateway beyond today's in-memory counting, without the HTTP around it.
Usage: taskset -c 0 .venv/bin/python bench/state_admission.py [--n 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import uvloop

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from roundhouse_gateway.keys.keys import Identity  # noqa: E402
from roundhouse_gateway.state.keeper import Keeper  # noqa: E402
from roundhouse_gateway.state.open import open_state  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402

WHO = Identity("bench", requests_per_minute=10**9, tokens_per_minute=10**12, monthly_token_budget=10**15)


async def cpu_per_admission(keeper: Keeper, in_flight: int, n: int) -> float:
    """Microseconds of this process's CPU per admission, `in_flight` at a time (each a task, as requests are)."""
    limit = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with limit:
            await keeper.admit(WHO, False)
            await asyncio.sleep(0)

    started = time.process_time()
    await asyncio.gather(*(one() for _ in range(n)))
    return (time.process_time() - started) / n * 1e6


async def run(url: str, n: int) -> None:
    memory, redis = open_state("memory:"), open_state(url)
    await redis.admit(WHO, False)  # the script loaded, the connection made
    print("| in flight | memory: us CPU per admission | redis | redis extra |\n|---|---|---|---|")
    for in_flight in (1, 8, 64):
        m, r = await cpu_per_admission(memory, in_flight, n), await cpu_per_admission(redis, in_flight, n)
        print(f"| {in_flight} | {m:.1f} | {r:.1f} | +{r - m:.1f} |")
    await redis.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    args = ap.parse_args()
    server = RedisServer(Path(tempfile.mkdtemp(prefix="rh-bench-redis-"))).start(prefix=("taskset", "-c", "1"))
    try:
        uvloop.run(run(server.url, args.n))
    finally:
        server.kill()


if __name__ == "__main__":
    main()

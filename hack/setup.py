#!/usr/bin/env python3
"""The set-up phases `make demo` and `make test` run before their real work: what is still to be
built on this machine and how long that takes, said up front, and each phase's measured time as it ends.

    hack/setup.py plan GOAL PHASE...   print which phases are cold and the expected total
    hack/setup.py run PHASE -- CMD...  run one phase's command, then print how long it took

Make decides what runs (each target depends on what it uses; `make demo` and `make test` prepare
with several jobs); this script only measures and tells. Standard library only: it runs before the
virtualenv exists.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.support import tools  # noqa: E402 - which make target installs what (standard library only)

CACHE = Path(os.environ.get("ROUNDHOUSE_CACHE", Path.home() / ".cache" / "roundhouse"))
LOG = CACHE / "setup-times.jsonl"


@dataclass(frozen=True)
class Phase:
    """One make target that installs or builds something, and how long its cold run takes here."""

    title: str
    cold_seconds: int  # measured cold on this kind of machine (2 cores), with the others building beside it
    after: tuple[str, ...] = ()  # phases it waits for (its make prerequisites among the phases)


# Cold durations from `make demo` on a fresh machine of this kind (2 cores, 24 GiB), 2026-12-03, measured with
# the phases running side by side as make runs them (so each includes its share of the shared CPUs); browser
# and promtool from the `make test` after it. Every cold run appends its own to ~/.cache/roundhouse/setup-times.jsonl.
PHASES: dict[str, Phase] = {
    "venv": Phase("Python virtualenv (.venv)", 105),
    "control-plane": Phase("Kubernetes control plane, etcd, kwok, helm (Go modules)", 1000),
    "engines": Phase("llama-server, Ollama, vLLM's and SGLang's parsers (registry sources)", 1320),
    "images": Phase("OCI images (pause, engines, Roundhouse)", 85, after=("engines",)),
    "node-deps": Phase("containerd, runc, CNI plugins (Debian)", 20),
    "browser": Phase("chromium (Debian)", 20),
    "promtool": Phase("prometheus, for promtool (Debian)", 25),
    "stores": Phase("redis-server, for the gateway state store tests (Debian)", 15),  # estimated, not yet timed cold
}


def _any(pattern: str) -> bool:
    return bool(glob.glob(str(CACHE / pattern)))


def _target_done(target: str) -> bool:
    return all(tools.find(n) is not None for n, t in tools.TOOLS.items() if t.target == target)


def is_cold(name: str) -> bool:
    """Whether the phase still has work to do (a cheap look at what it leaves behind)."""
    if name == "venv":
        return not glob.glob(str(REPO / ".venv" / ".installed-*"))
    # Looked up in the cache directly: build-control-plane.sh's `paths` would download Go modules first.
    if name == "control-plane":
        return not all(_any(f"{p}/bin/{b}") for p, b in (("k8s-*", "kubelet"), ("etcd-*", "etcd"), ("kwok-*", "kwok"),
                                                         ("helm-*", "helm")))  # fmt: skip
    if name == "engines":
        return not all(_any(p) for p in ("llama.cpp-*/bin/llama-server", "ollama-*/bin/ollama",
                                         "vllm-*/venv/.roundhouse-complete",
                                         "sglang-*/venv/.roundhouse-complete"))  # fmt: skip
    if name in PHASES:
        return not _target_done(name)
    raise SystemExit(f"hack/setup.py: unknown phase {name!r} (known: {', '.join(PHASES)})")


def expected_seconds(cold: list[str]) -> int:
    """Wall-clock estimate when the cold phases run side by side: the longest chain of waits."""
    memo: dict[str, int] = {}

    def finish(name: str) -> int:
        if name not in memo:
            own = PHASES[name].cold_seconds if name in cold else 0
            memo[name] = own + max((finish(a) for a in PHASES[name].after if a in PHASES), default=0)
        return memo[name]

    return max((finish(n) for n in cold), default=0)


def minutes(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 90 else f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def say(text: str) -> None:
    print(f"[setup {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def plan(goal: str, names: list[str]) -> int:
    cold = [n for n in names if is_cold(n)]
    if not cold:
        say(f"make {goal}: everything it needs is already built or installed on this machine")
        return 0
    warm = [n for n in names if n not in cold]
    say(f"make {goal}: first run on this machine builds or installs {len(cold)} thing(s), side by side:")
    for n in cold:
        say(f"  {n:<14} {PHASES[n].title}: about {minutes(PHASES[n].cold_seconds)}")
    if warm:
        say(f"  already in place: {', '.join(warm)}")
    say(f"expected about {minutes(expected_seconds(cold))} before {goal} starts, on {os.cpu_count()} cores"
        " (cached under ~/.cache/roundhouse: later runs skip it)")  # fmt: skip
    return 0


def run(name: str, argv: list[str]) -> int:
    cold = is_cold(name)
    t0 = time.monotonic()
    rc = subprocess.run(argv).returncode
    took = time.monotonic() - t0
    if rc != 0:
        say(f"{name}: FAILED after {minutes(took)} (exit {rc}): `{' '.join(argv)}`")
        return rc
    say(f"{name}: {'done in ' + minutes(took) if cold else f'already in place ({took:.1f}s)'}")
    if cold:
        CACHE.mkdir(parents=True, exist_ok=True)
        with LOG.open("a") as f:
            entry = {"phase": name, "seconds": round(took, 1), "at": time.time(), "cores": os.cpu_count()}
            f.write(json.dumps(entry) + "\n")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "plan":
        return plan(argv[1], argv[2:])
    if len(argv) >= 3 and argv[0] == "run" and argv[2] == "--":
        return run(argv[1], argv[3:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

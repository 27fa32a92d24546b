"""The command line a standalone gateway runs for an engine: the one the operator would render for a
pod, adapted to this machine (the binary from PATH, loopback, the port chosen here). Pure."""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from roundhouse_api import Family, InferenceEngine
from roundhouse_api.families import FAMILIES

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class LocalCommand:
    argv: list[str]
    env: dict[str, str]
    health_path: str


class CommandError(ValueError):
    """The engine cannot run here; the message says what to install or set."""


# The kubelet's expansion of container args: $(NAME) from the container's env, $$ for a literal $,
# a name not defined left as written. Nothing else is interpreted: no shell runs.
_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(arg: str, env: dict[str, str]) -> str:
    """`arg` with $(NAME) references replaced as the kubelet replaces them."""
    return _REFERENCE.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), arg)


def _replace(args: list[str], flag: str, value: str) -> list[str]:
    out = list(args)
    for i, a in enumerate(out):
        if a == flag and i + 1 < len(out):
            out[i + 1] = value
        elif a.startswith(flag + "="):
            out[i] = f"{flag}={value}"
    return out


def local_command(ie: InferenceEngine, port: int, cache_dir: str,
                  which: Callable[[str], str | None] = shutil.which) -> LocalCommand:  # fmt: skip
    """argv and env for `ie` on this machine, listening on LOOPBACK:`port`. spec.process wins;
    otherwise the family's rendered container with its binary looked up on PATH."""
    spec = ie.spec
    family = FAMILIES[spec.engine]
    health = family.health_path or "/"
    if spec.process is not None:
        argv = [a.replace("{port}", str(port)) for a in spec.process.command]
        return LocalCommand(argv, dict(spec.process.env), health)
    if spec.engine == Family.EXTERNAL:
        raise CommandError(f"engine {ie.metadata.name} is external: nothing runs here")
    plan = family.container(spec, cache_dir, "")
    container = plan.container
    command = list(container.get("command") or [])
    if not command:
        raise CommandError(f"engine {ie.metadata.name}: its family renders no command; set spec.process.command")
    program = posixpath.basename(command[0])
    found = which(program)
    if not found:
        raise CommandError(f"engine {ie.metadata.name}: {program} is not on PATH; install it or set "
                           "spec.process.command")  # fmt: skip
    args = _replace(_replace(list(container.get("args") or []), "--host", LOOPBACK), "--port", str(port))
    env = {e["name"]: str(e["value"]) for e in container.get("env") or [] if "value" in e}
    for e in container.get("env") or []:
        # A Secret in a pod: the environment here, by the variable's own name or, as the standalone
        # gateway reads API keys, by the Secret key's name.
        key = ((e.get("valueFrom") or {}).get("secretKeyRef") or {}).get("key")
        value = os.environ.get(e["name"]) or (os.environ.get(key) if key else None)
        if "valueFrom" in e and value is not None:
            env[e["name"]] = value
    args = [expand(a, env) for a in args]
    if "OLLAMA_HOST" in env:
        env["OLLAMA_HOST"] = f"{LOOPBACK}:{port}"
    return LocalCommand([str(found), *command[1:], *args], env, health)


async def spawn(cmd: LocalCommand, log_path: Path, banner: str) -> asyncio.subprocess.Process:
    """Run `cmd` in a session of its own, its output appended to `log_path` after a `banner` line;
    OSError when it cannot be run."""
    with log_path.open("ab") as out:
        out.write(f"--- roundhouse: {banner}: {cmd.argv}\n".encode())
        out.flush()
        return await asyncio.create_subprocess_exec(
            *cmd.argv, stdout=out, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
            env={**os.environ, **cmd.env}, start_new_session=True,
        )  # fmt: skip


async def stop_process(proc: asyncio.subprocess.Process, timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds; until it has exited."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()

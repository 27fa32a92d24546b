"""The command line a standalone gateway runs for an engine: the one the operator would render for a
pod, adapted to this machine (the binary from PATH, loopback, the port chosen here). Pure."""

from __future__ import annotations

import os
import posixpath
import shutil
from collections.abc import Callable
from dataclasses import dataclass

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
        if "valueFrom" in e and e["name"] in os.environ:  # a Secret in a pod: the environment here
            env[e["name"]] = os.environ[e["name"]]
    if "OLLAMA_HOST" in env:
        env["OLLAMA_HOST"] = f"{LOOPBACK}:{port}"
    return LocalCommand([str(found), *command[1:], *args], env, health)

"""The real engines, built by hack/build-engines.sh, run as local processes for tests and the demo.

`from_container` runs exactly the command line and environment the operator rendered for a pod,
with only what must differ on this machine mapped: the binary's path, the model file, the listen
address (loopback, a free port) and the model directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

from tests.support import tinylora, tools
from tests.support.processes import Process, free_port

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "hack" / "build-engines.sh"
# Where the upstream images keep each engine's binary, as the rendered pods name it.
IMAGE_BINARIES = {"/app/llama-server": "llama-server", "ollama": "ollama", "vllm": "vllm-python"}


class EngineMissing(RuntimeError):
    """An engine binary is not built: `make engines` builds it."""


@cache
def paths() -> dict[str, Path]:
    out = subprocess.run([str(BUILD), "paths"], check=True, capture_output=True, text=True).stdout
    return {name: Path(path) for name, path in (line.split(" ", 1) for line in out.splitlines() if " " in line)}


def binary(name: str) -> Path:
    """The built binary `name` (llama-server, ollama, vllm-python, sglang-python); EngineMissing when absent."""
    path = paths().get(name)
    if path is None or not path.exists():
        raise EngineMissing(tools.message(name))
    return path


def replace_flag(args: list[str], name: str, value: str) -> list[str]:
    """`args` with the value after `name` replaced (the flag must be there)."""
    i = args.index(name)
    return [*args[: i + 1], value, *args[i + 2 :]]


def plain_env(env: list[dict[str, Any]]) -> dict[str, str]:
    """A rendered container's env as a process gets it (Secret references get a placeholder)."""
    return {e["name"]: str(e.get("value", f"<from {e['name']} secret>")) for e in env}


def llama_server_argv(
    container: dict[str, Any], model: Path, port: int, loras: dict[str, Path] | None = None
) -> list[str]:
    """The rendered llama-server command line, run here: the built binary, the tiny model (and, for
    each LoRA adapter, the file `loras` maps its rendered path to, else the tiny model's LoRA, at the
    rendered scale), loopback."""
    assert container["command"] == ["/app/llama-server"], container["command"]
    args = replace_flag(list(container["args"]), "--model", str(model))
    args = replace_flag(args, "--host", "127.0.0.1")
    args = replace_flag(args, "--port", str(port))
    for i in [i + 1 for i, a in enumerate(args) if a == "--lora-scaled"]:
        path, scale = args[i].rsplit(":", 1)
        args[i] = f"{(loras or {}).get(path) or tiny_lora(model)}:{scale}"
    return [str(binary("llama-server")), *args]


def tiny_lora(model: Path) -> Path:
    """The tiny LoRA GGUF (tests/support/tinylora.py) beside the tiny model, written once."""
    path = model.with_name(model.stem + "-lora.gguf")
    if not path.exists():
        tinylora.write(path)
    return path


def llama_server(
    container: dict[str, Any],
    model: Path,
    log_dir: Path,
    name: str = "llama-server",
    loras: dict[str, Path] | None = None,
) -> Process:
    """A real llama-server started from a rendered container; ready when its readiness path says 200
    (`loras`: the local file for each rendered adapter path, as llama_server_argv takes)."""
    port = free_port()
    probe = container.get("readinessProbe", {}).get("httpGet", {}).get("path", "/health")
    env = {**os.environ, **plain_env(container.get("env", []))}
    argv = llama_server_argv(container, model, port, loras)
    proc = Process(name, argv, env, log_dir, f"http://127.0.0.1:{port}{probe}")
    proc.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    return proc


def llama_container(alias: str = "tiny", ctx: int = 512, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """A minimal llama-server container, as the operator would render one, for tests and the demo."""
    args = ["--model", "/models/tiny.gguf", "--alias", alias, "--host", "0.0.0.0", "--port", "8080",
            "--ctx-size", str(ctx), "--metrics", *extra]  # fmt: skip
    return {"command": ["/app/llama-server"], "args": args, "readinessProbe": {"httpGet": {"path": "/health"}}}


def ollama_env(container: dict[str, Any], port: int, models: Path) -> dict[str, str]:
    env = plain_env(container.get("env", []))
    assert env["OLLAMA_HOST"].startswith("0.0.0.0:"), env
    env["OLLAMA_HOST"] = f"127.0.0.1:{port}"
    env["OLLAMA_MODELS"] = str(models)
    # Ollama refuses requests whose Origin it does not know; loopback clients send none.
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(models.parent), **env}


def ollama(container: dict[str, Any], models: Path, log_dir: Path, name: str = "ollama") -> Process:
    """A real `ollama serve` from a rendered container (its env, loopback, `models` as OLLAMA_MODELS)."""
    assert container["command"] == ["ollama", "serve"], container["command"]
    port = free_port()
    env = ollama_env(container, port, models)
    probe = container.get("livenessProbe", {}).get("httpGet", {}).get("path", "/api/version")
    proc = Process(name, [str(binary("ollama")), "serve"], env, log_dir, f"http://127.0.0.1:{port}{probe}")
    proc.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    proc.ollama_env = env  # type: ignore[attr-defined]
    return proc


def ollama_container(extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """A minimal Ollama container, as the operator renders one, for tests and the demo."""
    env = [{"name": "OLLAMA_HOST", "value": "0.0.0.0:11434"}, {"name": "OLLAMA_MODELS", "value": "/models/ollama"}]
    env += [{"name": k, "value": v} for k, v in (extra_env or {}).items()]
    return {"command": ["ollama", "serve"], "env": env, "livenessProbe": {"httpGet": {"path": "/api/version"}}}


def ollama_cli(server: Process, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The ollama client against `server` (as the pod's exec probe runs it)."""
    env = server.ollama_env  # type: ignore[attr-defined]
    return subprocess.run([str(binary("ollama")), *args], env=env, capture_output=True, text=True, timeout=timeout)


def ollama_create(server: Process, tag: str, gguf: Path) -> None:
    """`ollama create TAG` from a Modelfile naming the GGUF: a model on the volume, no registry."""
    modelfile = gguf.parent / f"Modelfile-{tag.replace(':', '_').replace('/', '_')}"
    modelfile.write_text(f"FROM {gguf}\n")
    proc = ollama_cli(server, "create", tag, "-f", str(modelfile))
    if proc.returncode != 0:
        raise RuntimeError(f"ollama create {tag} failed: {proc.stdout}{proc.stderr}")


def copy_models(src: Path, dst: Path) -> Path:
    """A fresh OLLAMA_MODELS directory holding what `src` holds (models made once per session)."""
    shutil.copytree(src, dst, dirs_exist_ok=True)
    return dst

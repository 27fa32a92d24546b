"""Every tool the README's commands use that the machine image does not ship, with the make target that
installs it. Code that runs one asks here (`require`, `path`), so a missing tool is one line that names
the command providing it, and tests/unit/test_setup.py checks that each make target reaching such code
depends on that command. Standard library only: hack/local-cluster and hack/demo.py import it too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Tool:
    """A tool, the make target that installs or builds it, and where it comes from."""

    target: str
    source: str  # said in the message when it is missing
    kind: str = "command"  # command: on PATH; control-plane: in build-control-plane.sh's dirs; engine; image


TOOLS: dict[str, Tool] = {
    **{t: Tool("node-deps", "Debian's containerd, runc, CNI plugins, iptables, conntrack")
       for t in ("containerd", "ctr", "runc", "iptables", "conntrack")},
    "chromium": Tool("browser", "Debian's chromium"),
    "promtool": Tool("promtool", "Debian's prometheus package"),
    "redis-server": Tool("stores", "Debian's redis-server"),
    **{t: Tool("control-plane", "built from the Go module proxy", "control-plane")
       for t in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kubelet", "kube-proxy",
                 "etcd", "kwok", "helm")},
    **{t: Tool("engines", "built from registry sources", "engine") for t in ("llama-server", "ollama", "vllm-python",
                                                                                  "sglang-python")},
    "images": Tool("images", "OCI archives built here without Docker", "image"),
}  # fmt: skip

# What a real node (hack/local-cluster up --real-nodes) runs on this machine.
REAL_NODE = ("containerd", "ctr", "runc", "iptables", "conntrack", "kubelet", "kube-proxy", "images")


class ToolMissing(RuntimeError):
    """A tool is not installed; the message names the make target that installs it."""


@cache
def control_plane_dirs() -> tuple[str, ...]:
    out = subprocess.run([str(REPO / "hack" / "build-control-plane.sh"), "paths"], capture_output=True, text=True)
    return tuple(line for line in out.stdout.splitlines() if line)


@cache
def engine_paths() -> dict[str, str]:
    out = subprocess.run([str(REPO / "hack" / "build-engines.sh"), "paths"], capture_output=True, text=True)
    return dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)


IMAGES = ("pause", "llama-server", "ollama", "roundhouse", "vllm")  # hack/build-images.py's NAMES


def _images_built() -> bool:
    """An archive of every image (hack/build-images.py keys them by content; the import checks the rest)."""
    cache_root = Path(os.environ.get("ROUNDHOUSE_CACHE", Path.home() / ".cache" / "roundhouse"))
    return all(any((cache_root / "images").glob(f"{name}-*.oci.tar")) for name in IMAGES)


def find(name: str) -> str | None:
    """Where the tool is, or None."""
    tool = TOOLS[name]
    if tool.kind == "command":
        env = {"chromium": "ROUNDHOUSE_CHROMIUM"}.get(name)
        return (os.environ.get(env) if env else None) or shutil.which(name)
    if tool.kind == "control-plane":
        return next((str(Path(d) / name) for d in control_plane_dirs() if (Path(d) / name).exists()), None)
    if tool.kind == "engine":
        found = engine_paths().get(name)
        return found if found and Path(found).exists() else None
    return "images" if _images_built() else None


def message(name: str) -> str:
    tool = TOOLS[name]
    return f"{name} is not installed ({tool.source}): run `make {tool.target}`"


def path(name: str) -> str:
    """The tool's path; ToolMissing naming the make target when it is not there."""
    found = find(name)
    if found is None:
        raise ToolMissing(message(name))
    return found


def require(*names: str) -> None:
    """ToolMissing for the first of `names` that is not installed, naming its make target."""
    missing = [n for n in names if find(n) is None]
    if missing:
        targets = sorted({TOOLS[n].target for n in missing})
        raise ToolMissing(f"{message(missing[0])}" if len(missing) == 1 else
                          f"not installed: {', '.join(missing)}: run `make {' '.join(targets)}`")  # fmt: skip

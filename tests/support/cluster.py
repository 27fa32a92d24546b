"""Drive the local control plane (hack/local-cluster) from tests and the demo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
LOCAL_CLUSTER = REPO / "hack" / "local-cluster"
STATE = Path(os.environ.get("ROUNDHOUSE_CLUSTER_DIR", REPO / ".local-cluster"))


class ClusterError(RuntimeError):
    """The local control plane could not be started or answered unexpectedly."""


def _bin_dirs() -> list[str]:
    out = subprocess.run(
        [str(REPO / "hack" / "build-control-plane.sh"), "paths"], check=True, capture_output=True, text=True
    ).stdout
    return [line for line in out.splitlines() if line]


def is_up() -> bool:
    return subprocess.run([str(LOCAL_CLUSTER), "status"], capture_output=True).returncode == 0


def up() -> None:
    """Start the cluster (building binaries on first use); raise ClusterError with the reason."""
    proc = subprocess.run([str(LOCAL_CLUSTER), "up"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ClusterError(f"hack/local-cluster up failed:\n{proc.stderr[-4000:]}")


def down() -> None:
    subprocess.run([str(LOCAL_CLUSTER), "down"], capture_output=True)


@dataclass
class Cluster:
    """A running local cluster: kubectl with the admin kubeconfig, plus a few waits."""

    kubeconfig: Path = STATE / "kubeconfig"
    bin_dirs: list[str] = field(default_factory=_bin_dirs)

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": ":".join([*self.bin_dirs, os.environ.get("PATH", "")]),
        }

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, namespace: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = ["kubectl", *args]
        if namespace:
            argv += ["-n", namespace]
        proc = subprocess.run(argv, input=input, capture_output=True, text=True, env=self.env, timeout=120)
        if check and proc.returncode != 0:
            raise ClusterError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def apply(self, doc: dict[str, Any] | list[dict[str, Any]], namespace: str, check: bool = True) -> Any:
        docs = doc if isinstance(doc, list) else [doc]
        body = json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
        return self.kubectl(
            "apply", "--server-side", "--field-manager=roundhouse-tests", "-f", "-",
            input=body, namespace=namespace, check=check,
        )  # fmt: skip

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        return json.loads(self.kubectl("get", kind, name, "-o", "json", namespace=namespace).stdout)  # type: ignore[no-any-return]

    def list(self, kind: str, namespace: str, selector: str | None = None) -> list[dict[str, Any]]:
        args = ["get", kind, "-o", "json"] + (["-l", selector] if selector else [])
        return json.loads(self.kubectl(*args, namespace=namespace).stdout)["items"]  # type: ignore[no-any-return]

    def create_namespace(self, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.kubectl("create", "namespace", name)
        # Pods need the namespace's default ServiceAccount, which the controller-manager creates.
        wait_until(lambda: self.kubectl("get", "sa", "default", namespace=name, check=False).returncode == 0, 30,
                   f"default ServiceAccount in {name}")  # fmt: skip
        return name

    def delete_namespace(self, name: str) -> None:
        self.kubectl("delete", "namespace", name, "--wait=false", check=False)

    def wait_for_free_gpus(self, own_namespace: str, timeout: float = 120) -> None:
        """Wait until no pod outside `own_namespace` holds a GPU (earlier tests' namespaces are gone)."""

        def free() -> bool:
            pods = json.loads(self.kubectl("get", "pods", "-A", "-o", "json").stdout)["items"]
            return not [
                p for p in pods
                if p["metadata"]["namespace"] != own_namespace and any(
                    "nvidia.com/gpu" in (c.get("resources", {}).get("limits") or {}) for c in p["spec"]["containers"])
            ]  # fmt: skip

        wait_until(free, timeout, "GPUs held by other tests' pods to be released", interval=0.5)


def token_kubeconfig(cluster: Cluster, namespace: str, service_account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as a ServiceAccount with a bound token, so RBAC really applies."""
    token = cluster.kubectl("create", "token", service_account, "--duration=2h", namespace=namespace).stdout.strip()
    admin = json.loads(cluster.kubeconfig.read_text())
    server = admin["clusters"][0]["cluster"]
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "local", "cluster": server}],
        "users": [{"name": service_account, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "local", "user": service_account, "namespace": namespace}}],
    }  # fmt: skip
    path.write_text(json.dumps(doc))
    return path


def wait_until(probe: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll `probe` until it returns something truthy; raise AssertionError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


CONTROL_PLANE = ("kube-apiserver", "etcd")


def stop_control_plane(cluster: Cluster, names: tuple[str, ...] = CONTROL_PLANE) -> dict[str, Any]:
    """Kill the cluster's API server and etcd (an outage: connections refused, watches broken), keeping
    how each was started so that start_control_plane() brings the same ones back."""
    state = cluster.kubeconfig.parent
    pids = json.loads((state / "pids.json").read_text())
    saved: dict[str, Any] = {}
    for name in names:
        pid = pids[name]
        argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
        raw_env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        env = dict(e.decode().split("=", 1) for e in raw_env if b"=" in e)
        saved[name] = (argv, os.readlink(f"/proc/{pid}/cwd"), env)
        os.kill(pid, signal.SIGKILL)  # the API server's own graceful stop waits out its watches
        wait_until(lambda p=pid: not Path(f"/proc/{p}").exists() or b"zombie" in _status(p), 30, f"{name} stopped")
    return saved


def _status(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/status").read_bytes().lower()
    except OSError:
        return b"zombie"


def start_control_plane(cluster: Cluster, saved: dict[str, Any]) -> None:
    """Start what stop_control_plane() stopped (etcd first) and wait for the API server to be ready."""
    state = cluster.kubeconfig.parent
    pids = json.loads((state / "pids.json").read_text())
    for name in sorted(saved, key=lambda n: n != "etcd"):
        argv, cwd, env = saved[name]
        log = open(state / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        pids[name] = proc.pid
    (state / "pids.json").write_text(json.dumps(pids))
    wait_until(lambda: cluster.kubectl("get", "--raw", "/readyz", check=False).returncode == 0, 60,
               "the API server ready again", interval=0.1)  # fmt: skip

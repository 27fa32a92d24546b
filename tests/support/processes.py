"""Run the project's own console scripts as real processes for tests and the demo."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Process:
    """A console script started in its own process group, with its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path, health_url: str | None) -> None:
        self.name, self.argv, self.env, self.health_url = name, argv, env, health_url
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        if self.health_url:
            self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(self.health_url or "", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not healthy after {timeout}s:\n{self.tail()}")

    def healthy(self) -> bool:
        try:
            return self.alive() and httpx.get(self.health_url or "", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def kill(self) -> None:
        """Die abruptly, as a crashed or evicted pod would."""
        self.stop(signal.SIGKILL)

    def tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no output)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def operator(env: dict[str, str], log_dir: Path, namespaces: list[str] | None = None, extra: tuple[str, ...] = (),
             name: str = "operator") -> Process:  # fmt: skip
    """roundhouse-operator with its metrics and health endpoints on free loopback ports."""
    metrics, health = free_port(), free_port()
    prefix = os.environ.get("ROUNDHOUSE_OPERATOR_PREFIX", "").split()  # e.g. a profiler
    argv = [*prefix, str(VENV_BIN / "roundhouse-operator"), "--bind", "127.0.0.1",
            "--metrics-port", str(metrics), "--health-port", str(health)]  # fmt: skip
    for ns in namespaces or []:
        argv += ["--namespace", ns]
    proc = Process(name, [*argv, *extra], env, log_dir, f"http://127.0.0.1:{health}/healthz")
    proc.metrics_url = f"http://127.0.0.1:{metrics}/metrics"  # type: ignore[attr-defined]
    return proc


def enginesim(flavour: str, name: str, models: list[str], log_dir: Path, host: str = "127.0.0.1",
              port: int | None = None, prefix: tuple[str, ...] = (), **knobs: object) -> Process:  # fmt: skip
    """The engine simulator (tests/support/enginesim.py), by default on a free loopback port;
    `prefix` runs it through another command (e.g. `ip netns exec NAME`)."""
    port = port or free_port()
    argv = [*prefix, sys.executable, "-m", "tests.support.enginesim", "--flavour", flavour, "--host", host,
            "--port", str(port), "--name", name]  # fmt: skip
    for m in models:
        argv += ["--model", m]
    for key, value in knobs.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = Process(f"sim-{name}", argv, env, log_dir, f"http://{host}:{port}/_sim/config")
    proc.url = f"http://{host}:{port}"  # type: ignore[attr-defined]
    return proc


def gateway(config: Path, log_dir: Path, api_keys: list[str], admin_keys: list[str], probe_interval: float = 0.3,
            env: dict[str, str] | None = None, extra: tuple[str, ...] = (), key_file: str | None = None
            ) -> Process:  # fmt: skip
    """roundhouse-gateway standalone from `config`, with key files next to it (`key_file`: the client
    key file's text, instead of one line per key of `api_keys`)."""
    return _gateway(["--config", str(config), *extra], config.parent, f"gateway-{config.stem}", log_dir, api_keys,
                    admin_keys, probe_interval, env=env, key_file=key_file)  # fmt: skip


def cluster_gateway(namespace: str, kubeconfig: Path, work_dir: Path, log_dir: Path, api_keys: list[str],
                    admin_keys: list[str], probe_interval: float = 0.5, extra: tuple[str, ...] = (),
                    port: int | None = None, name: str = "gateway-cluster") -> Process:  # fmt: skip
    """roundhouse-gateway watching `namespace` with `kubeconfig` (e.g. a ServiceAccount's token)."""
    source = ["--namespace", namespace, "--kubeconfig", str(kubeconfig), *extra]
    return _gateway(source, work_dir, name, log_dir, api_keys, admin_keys, probe_interval, port=port)


def _gateway(source: list[str], work_dir: Path, name: str, log_dir: Path, api_keys: list[str], admin_keys: list[str],
             probe_interval: float, port: int | None = None, env: dict[str, str] | None = None,
             key_file: str | None = None) -> Process:  # fmt: skip
    port = port or free_port()
    keys, admin = work_dir / f"{name}.keys", work_dir / f"{name}.admin-keys"
    keys.write_text(key_file if key_file is not None else "\n".join(api_keys) + "\n")
    admin.write_text("\n".join(admin_keys) + "\n")
    # No drain delay on a test's SIGTERM (its own tests set one): a stop would cost every fixture 5 s.
    # Each test's gateway keeps its state (limits, budgets, usage) in a SQLite file of its own, not in
    # the user's cache that every gateway on the machine would share; a test may name another store.
    state = () if "--state" in source else ("--state", f"sqlite://{work_dir.resolve() / name}.state.sqlite")
    argv = [str(VENV_BIN / "roundhouse-gateway"), "--drain-delay", "0", "--drain-deadline", "3", *state, *source,
            "--host", "127.0.0.1", "--port", str(port),
            "--api-keys-file", str(keys), "--admin-keys-file", str(admin),
            "--probe-interval", str(probe_interval)]  # fmt: skip
    proc = Process(name, argv, env or dict(os.environ), log_dir, f"http://127.0.0.1:{port}/readyz")
    proc.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    proc.key_file = keys  # type: ignore[attr-defined]
    return proc


def llama_server(model: Path, log_dir: Path, alias: str = "tiny") -> Process:
    """A real llama-server (hack/build-engines.sh) serving `model` on a free loopback port, started the
    way the operator renders it."""
    from tests.support import engines

    return engines.llama_server(engines.llama_container(alias=alias), model, log_dir, name="llama-server")

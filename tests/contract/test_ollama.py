"""Every rendered Ollama pod, run by the real Ollama of the pinned version (built from the Go module
proxy): `ollama serve` with exactly the rendered environment (listen address and model directory
mapped here), the rendered model sidecar, the rendered readiness probe, and chat completions
for the model name the gateway sends."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from roundhouse_api.families import FAMILIES
from roundhouse_api.families.ollama import VERSION
from roundhouse_gateway.engines.catalog import engine_from_resource
from tests.contract.cases import Case, all_cases, engine, from_engine
from tests.contract.conftest import ARTIFACTS, Record, need
from tests.support import engines
from tests.support.processes import Process, free_port

CASES = all_cases("ollama")
FAMILY = FAMILIES[CASES[0].engine.spec.engine]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def models_dir(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OLLAMA_MODELS directory with the tiny GGUF created under every tag the cases name."""
    need("ollama")
    models = tmp_path_factory.mktemp("ollama") / "models"
    server = engines.ollama(engines.ollama_container(), models, ARTIFACTS / "logs", name="ollama-seed").start()
    try:
        for tag in sorted({c.engine.spec.model.source for c in CASES}):
            engines.ollama_create(server, tag, tiny_gguf)
    finally:
        server.stop()
    return models


@pytest.fixture
def serve(models_dir: Path, tmp_path: Path) -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for p in started:
        p.stop()


def test_the_binary_is_the_pinned_version() -> None:
    out = subprocess.run([str(need("ollama")), "--version"], capture_output=True, text=True)
    assert f"client version is {VERSION}" in out.stdout + out.stderr, out.stdout + out.stderr
    assert FAMILY.image == f"ollama/ollama:{VERSION}"


def run_sidecar(case: Case, url: str) -> subprocess.CompletedProcess[str]:
    """The rendered model sidecar, as its container runs it, pointed at this server; exits when done."""
    sidecar = next(c for c in case.pod["containers"] if c["name"] == "model-puller")
    argv = engines.replace_flag(list(sidecar["command"]), "--url", url)
    argv[0] = str(VENV_BIN / argv[0])
    return subprocess.run([*argv, "--exit"], capture_output=True, text=True, timeout=60)


def probe_passes(probe: dict[str, Any], server: Process) -> bool:
    """Run a rendered probe against `server` as the kubelet would: an HTTP GET passes on 200-399, an
    exec probe on exit status 0."""
    if "httpGet" in probe:
        return 200 <= httpx.get(server.url + probe["httpGet"]["path"], timeout=10).status_code < 400  # type: ignore[attr-defined]
    command = probe["exec"]["command"]
    assert command[0] == "ollama", command
    return engines.ollama_cli(server, *command[1:]).returncode == 0


def test_the_rendered_readiness_probe_passes_only_once_the_model_is_there(tiny_gguf: Path, tmp_path: Path,
                                                                          serve: list[Process]) -> None:  # fmt: skip
    """The startup and readiness probes are Ollama's own GET /v1/models/<tag> (no exec): 404 while the
    server runs without the model, 200 once it is on the volume."""
    case = CASES[0]
    probe = case.container["readinessProbe"]
    assert probe["httpGet"]["path"] == f"/v1/models/{case.engine.spec.model.source}"
    proc = engines.ollama(case.container, tmp_path / "empty", ARTIFACTS / "logs", name="ollama-probe")
    serve.append(proc)
    proc.start(timeout=60)
    url = proc.url  # type: ignore[attr-defined]
    assert httpx.get(url + probe["httpGet"]["path"], timeout=10).status_code == 404
    assert not probe_passes(case.container["startupProbe"], proc)
    engines.ollama_create(proc, case.engine.spec.model.source, tiny_gguf)
    assert probe_passes(probe, proc) and probe_passes(case.container["startupProbe"], proc)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rendered_pod_serves(case: Case, models_dir: Path, tmp_path: Path, serve: list[Process],
                             record: Record) -> None:  # fmt: skip
    models = engines.copy_models(models_dir, tmp_path / "models")
    proc = engines.ollama(case.container, models, ARTIFACTS / "logs", name=f"ollama-{case.id}")
    serve.append(proc)
    entry = {"case": case.id, "env": case.container["env"], "accepted": False}
    proc.start(timeout=60)
    url = proc.url  # type: ignore[attr-defined]
    # The model is on the volume: the sidecar must not pull (no registry is reachable here).
    sidecar = run_sidecar(case, url)
    assert sidecar.returncode == 0, sidecar.stderr
    assert '"event": "present"' in sidecar.stderr and '"pulling"' not in sidecar.stderr
    assert probe_passes(case.container["readinessProbe"], proc)
    assert case.container["startupProbe"]["httpGet"] == case.container["readinessProbe"]["httpGet"]
    listed = [m["id"] for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]]
    entry |= {"accepted": True, "listed": listed}
    assert FAMILY.listed_models(case.engine.spec)[0] in listed
    upstream = engine_from_resource(case.engine, endpoints=[url]).upstream_model
    body = {"model": upstream, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    plain = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    assert plain.status_code == 200, plain.text
    assert plain.json()["object"] == "chat.completion"
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, timeout=120) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and json.loads(lines[0][6:])["object"] == "chat.completion.chunk"
    record.write("ollama", entry)


def test_sigterm_reaches_ollama_serve_and_it_exits_at_once(models_dir: Path, tmp_path: Path,
                                                           serve: list[Process]) -> None:  # fmt: skip
    """The rendered container's PID 1 is `ollama serve` itself: SIGTERM stops it in seconds, not at the
    end of the grace period (the old /bin/sh wrapper ignored it)."""
    case = CASES[0]
    proc = engines.ollama(case.container, engines.copy_models(models_dir, tmp_path / "m"), ARTIFACTS / "logs",
                          name="ollama-sigterm")  # fmt: skip
    serve.append(proc)
    proc.start(timeout=60)
    assert proc.proc is not None
    t0 = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    proc.proc.wait(timeout=20)
    assert time.monotonic() - t0 < 10


def test_sidecar_pulls_a_missing_model_and_reports_the_registry_error(tmp_path: Path, serve: list[Process]) -> None:
    """A model that is not on the volume is pulled; when the registry cannot be reached the sidecar fails
    with Ollama's own message (and the pod stays unready through the exec probe), instead of
    crash-looping the server. The registry named is a closed port on loopback: no traffic leaves."""
    tag = f"127.0.0.1:{free_port()}/library/missing:latest"
    ie = engine("missing", {"engine": "ollama", "model": {"source": tag, "servedName": "missing"}})
    case = from_engine("ollama-missing", ie)
    proc = engines.ollama(case.container, tmp_path / "empty", ARTIFACTS / "logs", name="ollama-pull")
    serve.append(proc)
    proc.start(timeout=60)
    sidecar = run_sidecar(case, proc.url)  # type: ignore[attr-defined]
    assert '"event": "pulling"' in sidecar.stderr
    assert sidecar.returncode != 0 and "pull of" in sidecar.stderr and "failed" in sidecar.stderr
    assert proc.alive()
    assert "exec" in case.container["readinessProbe"]  # a namespaced tag: /v1/models/:model cannot name it
    assert not probe_passes(case.container["readinessProbe"], proc)

"""The simulator's Ollama shim goes through the same serve -> list -> pull -> show sequence the operator renders."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.cluster import wait_until
from tests.support.manifests import REPO
from tests.support.processes import free_port

pytestmark = pytest.mark.integration
SIM = [sys.executable, str(REPO / "tests" / "support" / "enginesim.py"), "--shim", "ollama"]


def test_ollama_pull_before_ready() -> None:
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{free_port()}"}
    server = subprocess.Popen([*SIM, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:

        def cli(*args: str) -> int:
            return subprocess.run([*SIM, *args], env=env, capture_output=True).returncode

        wait_until(lambda: cli("list") == 0, 20, "ollama serve to answer")
        assert cli("show", "llama3.1:8b") == 1  # the server answers, but the model is not there: not ready
        assert cli("pull", "llama3.1:8b") == 0
        assert cli("show", "llama3.1:8b") == 0
    finally:
        server.kill()

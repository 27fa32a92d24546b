"""The contract tier: each family's rendered command line run by the real engine of the pinned version.

Engines come from `make engines` (hack/build-engines.sh, cached under ~/.cache/roundhouse); a missing one fails the
run with the command that builds it, never skips.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import engines, tinygguf

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts" / "contract"


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A long training context: llama-server caps each slot's context at it, and the cases ask for up to 32k.
    return tinygguf.write(tmp_path_factory.mktemp("model") / "tiny.gguf", context_length=131072)


NEEDS = (
    "llama-server",
    "ollama",
    "vllm-python",
    "sglang-python",
)  # make test-contract depends on `make engines` for these


def need(name: str) -> Path:
    assert name in NEEDS, name
    try:
        return engines.binary(name)
    except engines.EngineMissing as err:
        pytest.fail(str(err), pytrace=False)


def run_checker(python: str, checker: Path, argvs: list[list[str]]) -> list[dict[str, Any]]:
    """An engine's own checker (vllm_check.py, sglang_check.py) on each command line, in one process:
    one JSON result per line."""
    stdin = "".join(json.dumps(a) + "\n" for a in argvs)
    out = subprocess.run([str(need(python)), str(checker)], input=stdin, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(argvs), out.stdout + out.stderr[-2000:]
    return results


class Record:
    """What each engine accepted, written to artifacts/contract/<family>.jsonl for the docs."""

    def __init__(self) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, Any] = {}

    def write(self, family: str, entry: dict[str, Any]) -> None:
        if family not in self.files:
            self.files[family] = open(ARTIFACTS / f"{family}.jsonl", "w")  # noqa: SIM115 - closed at session end
        self.files[family].write(json.dumps(entry, sort_keys=True) + "\n")
        self.files[family].flush()

    def close(self) -> None:
        for f in self.files.values():
            f.close()


@pytest.fixture(scope="session")
def record() -> Iterator[Record]:
    r = Record()
    yield r
    r.close()

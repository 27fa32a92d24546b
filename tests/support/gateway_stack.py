"""A standalone gateway in front of engine simulators on loopback, for integration and browser tests."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import openai
import yaml

from tests.support import processes
from tests.support.processes import Process

KEY, ADMIN = "sk-test-key", "admin-test-key"


class Stack:
    """Simulators + a gateway configured for them; everything stopped at the end."""

    def __init__(self, tmp: Path, artifacts: Path) -> None:
        self.tmp = tmp
        self.artifacts = artifacts
        self.sims: dict[str, Process] = {}
        self.gw: Process | None = None

    def sim(self, name: str, flavour: str, models: list[str], **knobs: object) -> Process:
        p = processes.enginesim(flavour, name, models, self.artifacts, **knobs).start()
        self.sims[name] = p
        return p

    def start(self, engines: list[dict[str, Any]], mode: str | None = None, **mode_spec: Any) -> Process:
        docs: list[dict[str, Any]] = []
        if mode:
            docs.append({"apiVersion": "roundhouse.dev/v1alpha1", "kind": "EngineMode", "metadata": {"name": "default"},
                         "spec": {"mode": mode, **mode_spec}})  # fmt: skip
        for e in engines:
            name = e.pop("name")
            spec = {"model": {"source": e.pop("source", "org/model"), "servedName": e.pop("served", "m")}, **e}
            if spec["engine"] != "external":
                spec["endpoints"] = [self.sims[s].url for s in spec.pop("sims")]  # type: ignore[attr-defined]
            docs.append({"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine", "metadata": {"name": name},
                         "spec": spec})  # fmt: skip
        config = self.tmp / "gateway.yaml"
        config.write_text(yaml.safe_dump_all(docs))
        self.gw = processes.gateway(config, self.artifacts, [KEY], [ADMIN]).start()
        time.sleep(0.8)  # first probe round
        return self.gw

    @property
    def url(self) -> str:
        assert self.gw is not None
        return str(self.gw.url)  # type: ignore[attr-defined]

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=30)

    def knobs(self, sim: str, **values: object) -> dict[str, Any]:
        url = self.sims[sim].url  # type: ignore[attr-defined]
        return (
            httpx.post(f"{url}/_sim/config", json=values).json() if values else httpx.get(f"{url}/_sim/config").json()
        )  # type: ignore[no-any-return]

    def stream(self, body: dict[str, Any]) -> Any:
        """A raw streaming chat request (the bytes exactly as the gateway sends them)."""
        return httpx.stream("POST", self.url + "/v1/chat/completions", json=body,
                            headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip

    def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, self.url + path, headers={"Authorization": f"Bearer {ADMIN}"}, **kw)

    def stop(self) -> None:
        for p in [*self.sims.values(), *([self.gw] if self.gw else [])]:
            p.stop()

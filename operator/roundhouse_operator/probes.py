"""Health probes of engines that run elsewhere (external APIs, engines with spec.endpoints): the
operator GETs each one's health URL, with an external API's key, and remembers the verdict."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import httpx

from roundhouse_api import Family, InferenceEngine
from roundhouse_api.families import FAMILIES

from .kube import Kube
from .render import runs_workload
from .store import Store


class Probing:
    """The Controller's probing half; the state it writes is the Controller's."""

    store: Store
    kube: Kube
    http: httpx.AsyncClient
    probes: dict[tuple[str, str], tuple[bool, str]]
    missing_secrets: dict[tuple[str, str], str]

    if TYPE_CHECKING:

        def parse(self, raw: dict[str, Any]) -> tuple[InferenceEngine | None, str | None]: ...

    async def probe_all(self) -> None:
        engines = []
        for ns in self.store.namespaces():
            for raw in self.store.all("InferenceEngine", ns):
                engine, error = self.parse(raw)
                if engine is not None and error is None and not runs_workload(engine):
                    engines.append(engine)
        await asyncio.gather(*(self.probe(e) for e in engines))

    async def probe(self, engine: InferenceEngine) -> None:
        """GET the family's health URL (an external API's /models with its key) and remember the verdict."""
        key = (engine.metadata.namespace, engine.metadata.name)
        url = probe_url(engine)
        headers = {}
        ref = FAMILIES[engine.spec.engine].api_key_ref(engine.spec)
        if ref is not None:
            api_key, problem = await asyncio.to_thread(
                self.kube.secret_value, engine.metadata.namespace, ref.name, ref.key
            )
            if api_key is None:
                self.missing_secrets[key] = f"spec.{engine.spec.engine.value}.apiKeySecretRef: {problem}"
                self.probes[key] = (False, self.missing_secrets[key])
                return
            self.missing_secrets.pop(key, None)
            headers["Authorization"] = f"Bearer {api_key}"
        try:
            resp = await self.http.get(url, headers=headers)
        except httpx.HTTPError as err:
            self.probes[key] = (False, f"{url} unreachable: {type(err).__name__}")
            return
        self.probes[key] = (resp.status_code < 300, f"{url} answered HTTP {resp.status_code}")


def probe_url(engine: InferenceEngine) -> str:
    """Health URL of an engine that runs elsewhere: its family's own health endpoint."""
    if engine.spec.engine == Family.EXTERNAL and engine.spec.external:
        return engine.spec.external.base_url.rstrip("/") + "/models"
    base = (engine.spec.endpoints or [""])[0].rstrip("/")
    return base + FAMILIES[engine.spec.engine].health_path

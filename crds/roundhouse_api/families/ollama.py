"""Ollama (`ollama serve`): everything Roundhouse knows about it, for v0.17.4.

`ollama serve` is the container's PID 1, so SIGTERM reaches it and running requests finish. The model
is pulled by a sidecar running the operator's own image (`roundhouse-ollama-pull`) only when the
server does not list it already: a restart with the model on the volume needs no registry, and no
shell ever sees the model tag.
"""

from __future__ import annotations

import posixpath
import re
from typing import ClassVar

from ..engine import Family, InferenceEngineSpec
from .base import OPENAI_COMMON, ContainerPlan, EngineFamily, env, gguf_bits, json_names

VERSION = "0.17.4"
# A model tag that fits in one URL path segment as it is (no "/", nothing to escape).
SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")


def has_model(tags_body: bytes, model: str) -> bool:
    """Whether Ollama's /api/tags lists `model` (a tag without a version means :latest)."""
    names = json_names(tags_body, "models", "name")
    return model in names or (":" not in model and f"{model}:latest" in names)


class Ollama(EngineFamily):
    family: ClassVar[Family] = Family.OLLAMA
    title: ClassVar[str] = "Ollama"
    image: ClassVar[str | None] = f"ollama/ollama:{VERSION}"
    version: ClassVar[str | None] = VERSION
    default_port: ClassVar[int | None] = 11434
    health_path: ClassVar[str] = "/api/version"
    # The server answers while the model is still being pulled: the gateway reads the model list.
    gateway_probe_path: ClassVar[str] = "/api/tags"
    openai_paths: ClassVar[frozenset[str]] = OPENAI_COMMON
    managed_flags: ClassVar[frozenset[str]] = frozenset()
    # Its runner loads the slot with the longest common prefix (runner/ollamarunner/cache.go,
    # findLongestCacheSlot); it exports no metrics, so load is the gateway's own count.
    caches_prompts: ClassVar[bool] = True
    # Ollama 0.17.4 closes its listener and every open connection at SIGTERM (server/routes.go).
    stop_delay_seconds: ClassVar[int] = 15
    managed_env: ClassVar[frozenset[str]] = frozenset({"OLLAMA_HOST", "OLLAMA_MODELS"})

    def container(self, spec: InferenceEngineSpec, cache_path: str, helper_image: str) -> ContainerPlan:
        cfg = spec.ollama
        port = self.port(spec)
        envs = [env("OLLAMA_HOST", f"0.0.0.0:{port}"), env("OLLAMA_MODELS", posixpath.join(cache_path, "ollama"))]
        if cfg is not None:
            for name, value in (
                ("OLLAMA_NUM_PARALLEL", cfg.num_parallel),
                ("OLLAMA_KEEP_ALIVE", cfg.keep_alive),
                ("OLLAMA_MAX_LOADED_MODELS", cfg.max_loaded_models),
                ("OLLAMA_MAX_QUEUE", cfg.max_queue),
            ):
                if value is not None:
                    envs.append(env(name, value))
        model = spec.model.source
        container = {
            "name": "engine",
            "command": ["ollama", "serve"],
            "env": envs,
            "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        }
        puller = {
            "name": "model-puller",
            "image": helper_image,
            "command": ["roundhouse-ollama-pull", "--url", f"http://127.0.0.1:{port}", "--model", model],
        }
        # Ready means the model is on disk, not merely that the server answers: GET /v1/models/<tag>
        # answers 200 only then (server/routes.go, RetrieveMiddleware into ShowHandler, 404 otherwise),
        # without the exec probe's process in the container. Its route takes one path segment, so a
        # namespaced tag ("user/model:tag") keeps `ollama show`.
        one_segment = SEGMENT.fullmatch(model) is not None
        return ContainerPlan(container, port, self.health_path, sidecars=[puller],
                             readiness_path=f"/v1/models/{model}" if one_segment else None,
                             readiness_exec=None if one_segment else ["ollama", "show", model])  # fmt: skip

    def upstream_model(self, spec: InferenceEngineSpec) -> str:
        # Ollama knows a model by its tag.
        return spec.model.source

    def listed_models(self, spec: InferenceEngineSpec) -> list[str]:
        tag = spec.model.source
        return [tag if ":" in tag else f"{tag}:latest"]

    def weight_bits(self, spec: InferenceEngineSpec) -> float:
        return gguf_bits(spec.model.source)  # the quantization is in the tag (default Q4_K_M)

    def kv_tokens(self, spec: InferenceEngineSpec) -> int:
        parallel = spec.ollama.num_parallel if spec.ollama and spec.ollama.num_parallel else 1
        return 4096 * parallel

    def probe_ok(self, status: int, body: bytes, upstream_model: str) -> tuple[bool, str]:
        if status != 200:
            return False, f"health answered HTTP {status}"
        if not has_model(body, upstream_model):
            return False, f"model {upstream_model} not pulled yet"
        return True, ""


FAMILY = Ollama()

"""What every engine family declares: one object per family, read by the operator, the gateway,
the CRD generator and the contract tests. Pure data and pure functions: no I/O."""

from __future__ import annotations

import json
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..base import SecretKeyRef
from ..engine import Family, InferenceEngineSpec

# Counting a request's prompt tokens with an engine's own tokenizer: a generator that yields the
# (path, JSON body) requests to POST to a running engine, is sent each JSON answer, and returns the
# count (None: this family cannot say). The gateway does the I/O; the family knows the protocol.
TokenCount = Generator[tuple[str, dict[str, Any]], Any, int | None]

# The operator's own image runs the helpers engine pods need (model fetch, Ollama pull): no shell,
# no third-party image to pin. The chart sets ROUNDHOUSE_IMAGE to the image it installs.
DEFAULT_HELPER_IMAGE = "ghcr.io/roundhouse-dev/roundhouse:0.1.0"


@dataclass
class ContainerPlan:
    """What a family needs from the pod: the engine container, init containers, probes and volumes."""

    container: dict[str, Any]
    port: int
    health_path: str | None
    init_containers: list[dict[str, Any]] = field(default_factory=list)
    readiness_exec: list[str] | None = None
    # An HTTP path that answers 200 only when the engine can serve (the startup and readiness probes'
    # check when set; an exec probe costs the kubelet a process in the container, ~0.5 s here).
    readiness_path: str | None = None
    sidecars: list[dict[str, Any]] = field(default_factory=list)  # more containers, sharing the cache volume
    extra_volumes: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class AdapterRoute:
    """How a request for one of spec.adapters reaches the engine: the gateway lists `name` as a model
    and sends a request for it to the base engine with `rewrite(body)`."""

    name: str  # what clients put in "model"
    model: str  # the "model" the engine expects for it
    # llama.cpp: the per-request "lora" field as (id, scale) pairs; id is the adapter's place on the command line.
    lora: tuple[tuple[int, float], ...] = ()

    def rewrite(self, body: dict[str, Any]) -> dict[str, Any]:
        """`body` as the engine takes it for this adapter (a client's own "lora" is replaced)."""
        out = {**body, "model": self.model}
        if self.lora:
            out["lora"] = [{"id": i, "scale": s} for i, s in self.lora]
        return out


def served_names(spec: InferenceEngineSpec) -> list[str]:
    """The names clients use: servedName first, then the aliases."""
    return [spec.model.served_name, *spec.model.aliases]


def cache_path(spec: InferenceEngineSpec) -> str:
    """Where the model cache volume is mounted in the engine container."""
    return spec.cache.mount_path if spec.cache else "/models"


def gpu_count(spec: InferenceEngineSpec) -> int:
    """GPUs per replica: spec.gpus, else 1 (0 for external)."""
    if spec.gpus is not None:
        return spec.gpus
    return 0 if spec.engine == Family.EXTERNAL else 1


def flag(args: list[str], name: str, value: object) -> None:
    """Append `name value` (or `name` / `--no-name` for a bool); nothing when the value is unset."""
    if value is None:
        return
    if isinstance(value, bool):
        args.append(name if value else f"--no-{name[2:]}")
    else:
        args += [name, str(value)]


def env(name: str, value: object) -> dict[str, Any]:
    return {"name": name, "value": str(value)}


def hf_token_env(spec: InferenceEngineSpec) -> list[dict[str, Any]]:
    ref = spec.model.hf_token_secret_ref
    if ref is None:
        return []
    source = {"secretKeyRef": {"name": ref.name, "key": ref.key}}
    return [{"name": "HF_TOKEN", "valueFrom": source}, {"name": "HUGGING_FACE_HUB_TOKEN", "valueFrom": source}]


# Bits per weight of common GGUF quantizations (llama.cpp's own figures, rounded), for the fit estimate.
GGUF_BITS = {
    "IQ1_S": 1.56, "IQ2_XXS": 2.06, "IQ2_XS": 2.31, "IQ2_M": 2.7, "Q2_K": 2.63, "IQ3_XXS": 3.06, "Q3_K_S": 3.5,
    "Q3_K_M": 3.91, "Q3_K_L": 4.27, "IQ4_XS": 4.25, "Q4_0": 4.55, "Q4_K_S": 4.58, "Q4_K_M": 4.85, "MXFP4": 4.25,
    "Q5_0": 5.54, "Q5_K_S": 5.54, "Q5_K_M": 5.69, "Q6_K": 6.56, "Q8_0": 8.5, "F16": 16.0, "BF16": 16.0, "F32": 32.0,
}  # fmt: skip


def gguf_bits(name: str) -> float:
    """Bits per weight of the GGUF quantization named in a file name or tag (default Q4_K_M)."""
    upper = name.upper()
    quant = next((q for q in sorted(GGUF_BITS, key=len, reverse=True) if q in upper), "Q4_K_M")
    return GGUF_BITS[quant]


def repeated_managed_flags(extra_args: list[str], managed: frozenset[str]) -> list[str]:
    """The flags in `extra_args` that the operator already sets (`--flag` and `--flag=value` forms)."""
    return [a for a in extra_args if a.split("=", 1)[0] in managed]


# What every family's pinned version serves (read from each one's sources); families add their own.
OPENAI_COMMON = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/v1/responses"})
# llama-server's and vLLM's further paths (vLLM also serves /v1/score).
OPENAI_RERANK_TOKENIZE = frozenset({"/v1/rerank", "/tokenize", "/detokenize"})


class EngineFamily:
    """One engine family. Subclasses set the class attributes and override what differs."""

    family: ClassVar[Family]
    title: ClassVar[str]  # how people name it ("GGUF (llama.cpp)")
    image: ClassVar[str | None] = None  # the pinned upstream image
    version: ClassVar[str | None] = None  # the engine version inside that image
    default_port: ClassVar[int | None] = None
    # The path Kubernetes' probes use, and the one the gateway's own active probe reads (they differ
    # for Ollama, whose server answers before the model is there).
    health_path: ClassVar[str] = "/health"
    gateway_probe_path: ClassVar[str] = "/health"
    # How often the kubelet checks a starting engine: an engine up in 0.1 s is seen as started within
    # this long (the next readiness probe runs at once after it), not at the next 10 s tick. The
    # failure threshold keeps the whole startup window (spec.probes.startupTimeoutSeconds).
    startup_probe_period_seconds: ClassVar[int] = 1
    # The OpenAI-compatible paths the pinned version serves (read from its sources): the gateway
    # sends a family nothing else.
    openai_paths: ClassVar[frozenset[str]] = frozenset()
    metrics_path: ClassVar[str | None] = None
    metrics: ClassVar[tuple[str, ...]] = ()
    tokenize_path: ClassVar[str | None] = None
    # Flags the operator renders itself: repeating them in extraArgs would break probes or routing.
    managed_flags: ClassVar[frozenset[str]] = frozenset()
    caches_prompts: ClassVar[bool] = False  # reuses a cached prompt prefix: prefix affinity is on by default
    # Gauges in its metrics that together count the requests it holds, running and waiting (from every
    # gateway): the engine-reported load.
    load_metrics: ClassVar[tuple[str, ...]] = ()
    # Seconds a stopping pod keeps serving before the engine gets SIGTERM (a preStop sleep), for engines
    # that cut running requests off at SIGTERM: endpoints drop the pod first, running requests finish.
    stop_delay_seconds: ClassVar[int] = 0

    def count_tokens(self, body: dict[str, Any], kind: str, model: str) -> TokenCount:
        """The exact prompt tokens of a chat or completions `body` (see TokenCount); none by default."""
        return None
        yield  # a generator all the same

    def runs_workload(self, spec: InferenceEngineSpec) -> bool:
        """Whether the operator runs pods for it (not for an external API or given endpoints)."""
        return not spec.endpoints

    def port(self, spec: InferenceEngineSpec) -> int:
        assert self.default_port is not None, f"{self.family} has no port"
        return self.default_port

    def container(self, spec: InferenceEngineSpec, cache_path: str, helper_image: str) -> ContainerPlan:
        """The engine container and what it needs in its pod."""
        raise NotImplementedError(f"{self.family} runs no workload")

    def api_key_ref(self, spec: InferenceEngineSpec) -> SecretKeyRef | None:
        """The Secret key holding the API key the engine requires (the gateway sends it as Bearer)."""
        return None

    def upstream_model(self, spec: InferenceEngineSpec) -> str:
        """The "model" the engine itself expects in a request (the gateway rewrites to it)."""
        return spec.model.served_name

    def listed_models(self, spec: InferenceEngineSpec) -> list[str]:
        """The ids the engine lists on /v1/models when it runs the rendered command line."""
        return [spec.model.served_name]

    def context_per_request(self, spec: InferenceEngineSpec) -> int | None:
        """Tokens one request may use (prompt and answer), when the spec says."""
        return None

    def adapter_routes(self, spec: InferenceEngineSpec) -> list[AdapterRoute]:
        """How each of spec.adapters is asked for, in spec order; empty for families that take none."""
        return []

    def runtime_adapters(self, spec: InferenceEngineSpec) -> bool:
        """Whether the operator loads spec.adapters on running replicas (so replicas may differ until it has:
        the gateway reads each replica's `loaded_adapters`); otherwise every replica starts with them."""
        return False

    def loaded_adapters(self, models_body: bytes) -> dict[str, str]:
        """The adapters a replica's /v1/models answer lists: name -> where it was loaded from."""
        return {}

    def failed_adapters(self, spec: InferenceEngineSpec, log: str) -> dict[str, str]:
        """The adapters an engine that exited says it could not load, from its log's tail: name -> its words."""
        return {}

    def kv_tokens(self, spec: InferenceEngineSpec) -> int:
        """Tokens of KV cache the engine holds at once, for the ModelFits estimate."""
        return 8192

    def weight_bits(self, spec: InferenceEngineSpec) -> float:
        """Bits per weight the engine loads, for the ModelFits estimate."""
        return 16.0

    def gpu_memory_share(self, spec: InferenceEngineSpec) -> float:
        """The share of each GPU's memory the engine lets itself use."""
        return 1.0

    def kv_cache_fp8(self, spec: InferenceEngineSpec) -> bool:
        """Whether the KV cache is stored in 8 bits (half the bytes per token)."""
        return False

    def model_copies(self, spec: InferenceEngineSpec) -> int:
        """Copies of the model one pod runs (data parallelism), each on its share of the GPUs."""
        return 1

    # Engines that can keep part of the model off the GPU get a gpuLayers suggestion when it does not fit.
    partial_offload: ClassVar[bool] = False

    def probe_ok(self, status: int, body: bytes, upstream_model: str) -> tuple[bool, str]:
        """Judge an answer to the gateway's probe the way this family means it."""
        if status != 200:
            return False, f"health answered HTTP {status}"
        return True, ""

    def serves(self, path: str) -> bool:
        """Whether the engine serves this OpenAI path (e.g. /v1/embeddings)."""
        return path in self.openai_paths

    def request_body(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """The body as this family takes it at `path` (the gateway takes one shape per endpoint).
        ValueError when the family cannot take what was asked."""
        return body


def count_by_tokenize(body: dict[str, Any], kind: str, model: str, chat_extra: dict[str, Any]) -> TokenCount:
    """One POST /tokenize with the chat's messages (and tools) or the prompt, answered with {"count"}:
    vLLM's and SGLang's protocol; `chat_extra` is what a chat request adds for that engine."""
    if kind == "chat":
        request: dict[str, Any] = {"model": model, "messages": body["messages"], **chat_extra}
        if body.get("tools"):
            request["tools"] = body["tools"]
    elif kind == "completions" and isinstance(body.get("prompt"), str):
        request = {"model": model, "prompt": body["prompt"]}
    else:
        return None
    answer = yield "/tokenize", request
    count = answer.get("count") if isinstance(answer, dict) else None
    return count if isinstance(count, int) else None


def json_names(body: bytes, key: str, field_name: str) -> set[str]:
    """Values of `field_name` in the objects of the list `key` of a JSON body; empty when unreadable."""
    try:
        items = json.loads(body).get(key, [])
        return {str(i.get(field_name)) for i in items if isinstance(i, dict)}
    except (ValueError, AttributeError):
        return set()

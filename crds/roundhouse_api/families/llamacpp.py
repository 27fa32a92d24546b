"""llama.cpp's llama-server: everything Roundhouse knows about it, for build b11312.

Flags are those of `common/arg.cpp` at that build, checked by the contract tests against the real
binary built from the same sources (tests/contract). A URL model is fetched by an init container
running the operator's own image (`roundhouse-fetch`): no shell sees the URL.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any, ClassVar
from urllib.parse import urlparse

from .. import managed_flags
from ..engine import Family, InferenceEngineSpec, LlamaCppConfig
from .base import (
    OPENAI_COMMON,
    OPENAI_RERANK_TOKENIZE,
    AdapterRoute,
    ContainerPlan,
    EngineFamily,
    TokenCount,
    cache_path,
    flag,
    gguf_bits,
    hf_token_env,
    served_names,
)

BUILD = 11312
COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
# What llama-server logs (common/common.cpp) before it exits on an adapter it cannot load.
LORA_LOAD_FAILED = re.compile(r"failed to load lora adapter '([^']*)'")
SPLIT_GGUF = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
DEFAULT_CONFIG = LlamaCppConfig()  # built once: construction runs CEL rules


def gguf_files(source: str) -> list[str]:
    """Every file of a GGUF model: the shards of a split GGUF (siblings named like the first), else one."""
    match = SPLIT_GGUF.search(source)
    if not match:
        return [source]
    total = int(match.group(2))
    stem = source[: match.start()]
    suffix = source[match.end() - len(".gguf") :]
    return [f"{stem}-{i:05d}-of-{total:05d}{suffix}" for i in range(1, total + 1)]


def is_url(source: str) -> bool:
    return urlparse(source).scheme in ("http", "https")


def gguf_local_path(source: str, cache_path: str) -> str:
    """Where llama-server reads the (first) GGUF file."""
    if is_url(source):
        return posixpath.join(cache_path, "gguf", posixpath.basename(urlparse(source).path))
    if source.startswith("/"):
        return source
    return posixpath.join(cache_path, source)


def lora_local_path(source: str, cache_path: str) -> str:
    """Where llama-server reads a LoRA GGUF: a URL is fetched into the cache's lora/ directory."""
    if is_url(source):
        return posixpath.join(cache_path, "lora", posixpath.basename(urlparse(source).path))
    return gguf_local_path(source, cache_path)


def lora_fetch_init(urls: list[str], cache_path: str, helper_image: str) -> dict[str, object]:
    """An init container that downloads the adapters given by URL once into the cache volume."""
    return {
        "name": "fetch-adapters",
        "image": helper_image,
        "command": ["roundhouse-fetch", "--dest", posixpath.join(cache_path, "lora"), *urls],
        "securityContext": {"runAsUser": 0},
    }


def gguf_fetch_init(source: str, cache_path: str, helper_image: str) -> dict[str, object]:
    """An init container that downloads the GGUF (every shard) once into the cache volume."""
    return {
        "name": "fetch-model",
        "image": helper_image,
        "command": ["roundhouse-fetch", "--dest", posixpath.join(cache_path, "gguf"), *gguf_files(source)],
        "securityContext": {"runAsUser": 0},
    }


def load_mode(cfg: LlamaCppConfig) -> str | None:
    """--load-mode: loadMode, else what the older mlock/noMmap booleans meant."""
    if cfg.load_mode:
        return cfg.load_mode
    if cfg.mlock:
        return "mlock" if cfg.no_mmap else "mmap+mlock"
    if cfg.no_mmap:
        return "none"
    return None


class LlamaCpp(EngineFamily):
    family: ClassVar[Family] = Family.LLAMACPP
    title: ClassVar[str] = "GGUF (llama.cpp)"
    image: ClassVar[str | None] = f"ghcr.io/ggml-org/llama.cpp:server-cuda-b{BUILD}"
    version: ClassVar[str | None] = f"b{BUILD}"
    default_port: ClassVar[int | None] = 8080
    openai_paths: ClassVar[frozenset[str]] = OPENAI_COMMON | OPENAI_RERANK_TOKENIZE
    metrics_path: ClassVar[str | None] = "/metrics"
    metrics: ClassVar[tuple[str, ...]] = (
        "llamacpp:requests_processing",
        "llamacpp:requests_deferred",
        "llamacpp:prompt_tokens_total",
        "llamacpp:tokens_predicted_total",
    )
    tokenize_path: ClassVar[str | None] = "/tokenize"
    managed_flags: ClassVar[frozenset[str]] = managed_flags.LLAMACPP
    caches_prompts: ClassVar[bool] = True
    load_metrics: ClassVar[tuple[str, ...]] = ("llamacpp:requests_processing", "llamacpp:requests_deferred")
    partial_offload: ClassVar[bool] = True

    def request_body(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """llama-server's /tokenize reads `content` (the gateway takes vLLM's `prompt`), and its
        /detokenize answers `content`; `messages` it cannot tokenize (no template on that path)."""
        if path != "/tokenize":
            return body
        if "prompt" not in body:
            raise ValueError("llama.cpp engines tokenize a `prompt`, not `messages`")
        out = {k: v for k, v in body.items() if k not in ("prompt", "add_special_tokens")}
        out["content"] = body["prompt"]
        if "add_special_tokens" in body:
            out["add_special"] = body["add_special_tokens"]
        return out

    def weight_bits(self, spec: InferenceEngineSpec) -> float:
        return gguf_bits(spec.model.source)

    def port(self, spec: InferenceEngineSpec) -> int:
        return (spec.llamacpp or DEFAULT_CONFIG).port

    def container(self, spec: InferenceEngineSpec, cache_path: str, helper_image: str) -> ContainerPlan:
        cfg = spec.llamacpp or DEFAULT_CONFIG
        args = ["--model", gguf_local_path(spec.model.source, cache_path), "--alias", ",".join(served_names(spec))]
        args += ["--host", "0.0.0.0", "--port", str(cfg.port)]
        flag(args, "--ctx-size", cfg.context_size)
        flag(args, "--n-gpu-layers", cfg.gpu_layers)
        flag(args, "--threads", cfg.threads)
        flag(args, "--parallel", cfg.parallel)
        flag(args, "--cont-batching", cfg.cont_batching)
        flag(args, "--flash-attn", cfg.flash_attention)
        if cfg.metrics:
            args.append("--metrics")
        if cfg.tensor_split:
            args += ["--tensor-split", ",".join(f"{v:g}" for v in cfg.tensor_split)]
        flag(args, "--split-mode", cfg.split_mode)
        flag(args, "--batch-size", cfg.batch_size)
        flag(args, "--rope-freq-base", cfg.rope_freq_base)
        flag(args, "--rope-freq-scale", cfg.rope_freq_scale)
        flag(args, "--load-mode", load_mode(cfg))
        flag(args, "--numa", cfg.numa)
        # Every adapter loaded at scale 0: a request applies its own with the per-request "lora" field, so
        # one replica serves the base model and every adapter. The 0 matters: at b11312 a request without
        # "lora" runs with the command line's scales (--lora's are 1), --lora-init-without-apply or not.
        for adapter in spec.adapters:
            args += ["--lora-scaled", f"{lora_local_path(adapter.source, cache_path)}:0"]
        if spec.adapters:
            args.append("--lora-init-without-apply")
        args += cfg.extra_args
        source = spec.model.source
        init = [gguf_fetch_init(source, cache_path, helper_image)] if is_url(source) else []
        if urls := [a.source for a in spec.adapters if is_url(a.source)]:
            init.append(lora_fetch_init(urls, cache_path, helper_image))
        container = {
            "name": "engine",
            "command": ["/app/llama-server"],
            "args": args,
            "env": hf_token_env(spec),
            "ports": [{"name": "http", "containerPort": cfg.port, "protocol": "TCP"}],
        }
        return ContainerPlan(container, cfg.port, self.health_path, init_containers=init)

    def count_tokens(self, body: dict[str, Any], kind: str, model: str) -> TokenCount:
        # llama-server renders a chat with its template (POST /apply-template -> {"prompt"}) and counts
        # text (POST /tokenize with add_special -> {"tokens"}): together, the usage.prompt_tokens it reports.
        if kind == "chat":
            rendered = yield "/apply-template", {"messages": body["messages"]}
            text = rendered.get("prompt") if isinstance(rendered, dict) else None
        elif kind == "completions":
            text = body.get("prompt")
        else:
            return None
        if not isinstance(text, str):
            return None
        answer = yield "/tokenize", {"content": text, "add_special": True}
        tokens = answer.get("tokens") if isinstance(answer, dict) else None
        return len(tokens) if isinstance(tokens, list) else None

    def upstream_model(self, spec: InferenceEngineSpec) -> str:
        # llama-server keeps its aliases in a sorted set and calls itself by the first of them.
        return min(served_names(spec))

    def listed_models(self, spec: InferenceEngineSpec) -> list[str]:
        return [min(served_names(spec))]

    def failed_adapters(self, spec: InferenceEngineSpec, log: str) -> dict[str, str]:
        by_path = {lora_local_path(a.source, cache_path(spec)): a.name for a in spec.adapters}
        return {by_path[m[1]]: m[0] for m in LORA_LOAD_FAILED.finditer(log) if m[1] in by_path}

    def adapter_routes(self, spec: InferenceEngineSpec) -> list[AdapterRoute]:
        # A request for an adapter is a request for the base with that adapter's id (its place in the
        # --lora-scaled order) and scale in "lora"; the adapters loaded but not named stay at scale 0.
        base = self.upstream_model(spec)
        return [AdapterRoute(a.name, base, ((i, a.scale or 1.0),)) for i, a in enumerate(spec.adapters)]

    def context_per_request(self, spec: InferenceEngineSpec) -> int | None:
        # With --parallel given, the KV cache is split per slot (no unified KV): ctx-size / parallel.
        cfg = spec.llamacpp
        if cfg is None or not cfg.context_size:
            return None
        return cfg.context_size // (cfg.parallel or 1)

    def kv_tokens(self, spec: InferenceEngineSpec) -> int:
        # --ctx-size is the total shared by all slots; 0 means the model's own.
        if spec.llamacpp and spec.llamacpp.context_size:
            return spec.llamacpp.context_size
        return spec.routing.context_length if spec.routing and spec.routing.context_length else 4096


FAMILY = LlamaCpp()

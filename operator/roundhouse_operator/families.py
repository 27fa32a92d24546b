"""Per-family container specs, from each engine's documented command line.

Pure functions: an InferenceEngineSpec in, plain Kubernetes dicts out. Flags are emitted only
for fields the user set, so each engine keeps its own defaults for the rest.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from roundhouse_api import Family, InferenceEngineSpec, LlamaCppConfig, VLLMConfig

IMAGES: dict[Family, str] = {
    Family.VLLM: "vllm/vllm-openai:v0.11.0",
    Family.LLAMACPP: "ghcr.io/ggml-org/llama.cpp:server-cuda-b6850",
    Family.OLLAMA: "ollama/ollama:0.12.6",
}
FETCH_IMAGE = "curlimages/curl:8.16.0"
PORTS: dict[Family, int] = {Family.VLLM: 8000, Family.OLLAMA: 11434}
SPLIT_GGUF = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
# Built once: a model's construction runs its CEL rules in Python, and every status computes the
# engine's endpoint (its port) through the family's builder.
DEFAULT_VLLM = VLLMConfig()
DEFAULT_LLAMACPP = LlamaCppConfig()


@dataclass
class ContainerPlan:
    """What a family needs from the pod: the engine container, init containers, probes and volumes."""

    container: dict[str, Any]
    port: int
    health_path: str | None
    init_containers: list[dict[str, Any]] = field(default_factory=list)
    readiness_exec: list[str] | None = None
    extra_volumes: list[dict[str, Any]] = field(default_factory=list)


def served_names(spec: InferenceEngineSpec) -> list[str]:
    return [spec.model.served_name, *spec.model.aliases]


def gpu_count(spec: InferenceEngineSpec) -> int:
    """GPUs per replica: spec.gpus, else 1 (0 for external)."""
    if spec.gpus is not None:
        return spec.gpus
    return 0 if spec.engine == Family.EXTERNAL else 1


def _flag(args: list[str], name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool):
        args.append(name if value else f"--no-{name[2:]}")
    else:
        args += [name, str(value)]


def _env(name: str, value: object) -> dict[str, Any]:
    return {"name": name, "value": str(value)}


def _hf_token_env(spec: InferenceEngineSpec) -> list[dict[str, Any]]:
    ref = spec.model.hf_token_secret_ref
    if ref is None:
        return []
    source = {"secretKeyRef": {"name": ref.name, "key": ref.key}}
    return [{"name": "HF_TOKEN", "valueFrom": source}, {"name": "HUGGING_FACE_HUB_TOKEN", "valueFrom": source}]


def vllm(spec: InferenceEngineSpec, cache_path: str) -> ContainerPlan:
    """`vllm serve <model>` with the flags of spec.vllm."""
    cfg = spec.vllm or DEFAULT_VLLM
    port = PORTS[Family.VLLM]
    args = [spec.model.source, "--served-model-name", *served_names(spec), "--host", "0.0.0.0", "--port", str(port)]
    _flag(args, "--revision", spec.model.revision)
    args += ["--tensor-parallel-size", str(cfg.tensor_parallel_size)]
    args += ["--pipeline-parallel-size", str(cfg.pipeline_parallel_size)]
    _flag(args, "--gpu-memory-utilization", cfg.gpu_memory_utilization)
    _flag(args, "--max-model-len", cfg.max_model_len)
    _flag(args, "--max-num-seqs", cfg.max_num_seqs)
    _flag(args, "--max-num-batched-tokens", cfg.max_num_batched_tokens)
    _flag(args, "--dtype", cfg.dtype)
    _flag(args, "--quantization", cfg.quantization)
    _flag(args, "--kv-cache-dtype", cfg.kv_cache_dtype)
    _flag(args, "--enable-chunked-prefill", cfg.enable_chunked_prefill)
    if cfg.enable_auto_tool_choice:
        args.append("--enable-auto-tool-choice")
    _flag(args, "--tool-call-parser", cfg.tool_call_parser)
    args += cfg.extra_args
    env = [_env("HF_HOME", posixpath.join(cache_path, "huggingface")), *_hf_token_env(spec)]
    extra_volumes: list[dict[str, Any]] = []
    if gpu_count(spec) > 1:
        # Tensor/pipeline parallel workers talk through shared memory; the default 64Mi is far too small.
        extra_volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": cfg.shm_size}})
    container = {
        "name": "engine",
        "command": ["vllm", "serve"],
        "args": args,
        "env": env,
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
    }
    if extra_volumes:
        container["volumeMounts"] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    return ContainerPlan(container, port, "/health", extra_volumes=extra_volumes)


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


def gguf_fetch_init(source: str, cache_path: str) -> dict[str, Any]:
    """An init container that downloads the GGUF (every shard) once into the cache volume."""
    directory = posixpath.join(cache_path, "gguf")
    lines = ["set -eu", f'mkdir -p "{directory}"']
    for url in gguf_files(source):
        dest = posixpath.join(directory, posixpath.basename(urlparse(url).path))
        lines.append(
            f'if [ -s "{dest}" ]; then echo "cached: {dest}"; else '
            f'echo "fetching {url}"; curl -fL --retry 5 --retry-delay 5 -C - -o "{dest}.part" "{url}" '
            f'&& mv "{dest}.part" "{dest}"; fi'
        )
    return {
        "name": "fetch-model",
        "image": FETCH_IMAGE,
        "command": ["/bin/sh", "-c", "\n".join(lines)],
        "securityContext": {"runAsUser": 0},
    }


def llamacpp(spec: InferenceEngineSpec, cache_path: str) -> ContainerPlan:
    """`llama-server` with the flags of spec.llamacpp; a URL model is fetched by an init container."""
    cfg = spec.llamacpp or DEFAULT_LLAMACPP
    port = cfg.port
    names = served_names(spec)
    args = ["--model", gguf_local_path(spec.model.source, cache_path), "--alias", ",".join(names)]
    args += ["--host", "0.0.0.0", "--port", str(port)]
    _flag(args, "--ctx-size", cfg.context_size)
    _flag(args, "--n-gpu-layers", cfg.gpu_layers)
    _flag(args, "--threads", cfg.threads)
    _flag(args, "--parallel", cfg.parallel)
    _flag(args, "--cont-batching", cfg.cont_batching)
    _flag(args, "--flash-attn", cfg.flash_attention)
    if cfg.metrics:
        args.append("--metrics")
    if cfg.tensor_split:
        args += ["--tensor-split", ",".join(f"{v:g}" for v in cfg.tensor_split)]
    _flag(args, "--split-mode", cfg.split_mode)
    _flag(args, "--batch-size", cfg.batch_size)
    _flag(args, "--rope-freq-base", cfg.rope_freq_base)
    _flag(args, "--rope-freq-scale", cfg.rope_freq_scale)
    if cfg.mlock:
        args.append("--mlock")
    if cfg.no_mmap:
        args.append("--no-mmap")
    _flag(args, "--numa", cfg.numa)
    args += cfg.extra_args
    init = [gguf_fetch_init(spec.model.source, cache_path)] if is_url(spec.model.source) else []
    container = {
        "name": "engine",
        "command": ["/app/llama-server"],
        "args": args,
        "env": _hf_token_env(spec),
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
    }
    return ContainerPlan(container, port, "/health", init_containers=init)


def ollama(spec: InferenceEngineSpec, cache_path: str) -> ContainerPlan:
    """`ollama serve`, pulling the model before the pod reports ready."""
    cfg = spec.ollama
    port = PORTS[Family.OLLAMA]
    env = [_env("OLLAMA_HOST", f"0.0.0.0:{port}"), _env("OLLAMA_MODELS", posixpath.join(cache_path, "ollama"))]
    if cfg is not None:
        for name, value in (
            ("OLLAMA_NUM_PARALLEL", cfg.num_parallel),
            ("OLLAMA_KEEP_ALIVE", cfg.keep_alive),
            ("OLLAMA_MAX_LOADED_MODELS", cfg.max_loaded_models),
            ("OLLAMA_MAX_QUEUE", cfg.max_queue),
        ):
            if value is not None:
                env.append(_env(name, value))
    model = spec.model.source
    # Serve, pull once the server answers, then stay in the foreground with the server.
    script = (
        "ollama serve & server=$!\n"
        "until ollama list >/dev/null 2>&1; do sleep 1; done\n"
        f'ollama pull "{model}" || {{ echo "pull of {model} failed"; kill $server; exit 1; }}\n'
        "wait $server"
    )
    container = {
        "name": "engine",
        "command": ["/bin/sh", "-c", script],
        "env": env,
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
    }
    # Ready means the model is on disk, not merely that the server answers.
    return ContainerPlan(container, port, "/api/version", readiness_exec=["ollama", "show", model])


BUILDERS = {Family.VLLM: vllm, Family.LLAMACPP: llamacpp, Family.OLLAMA: ollama}

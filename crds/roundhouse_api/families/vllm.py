"""vLLM's OpenAI server (`vllm serve`): everything Roundhouse knows about it, for v0.33.0.

Every rendered command line is parsed by vLLM's own `vllm serve` argument parser of that version in
the contract tests (tests/contract, hack/build-vllm-parser.sh).
"""

from __future__ import annotations

import json
import posixpath
import re
from typing import Any, ClassVar

from .. import managed_flags
from ..engine import Family, InferenceEngineSpec, VLLMConfig
from .base import (
    OPENAI_COMMON,
    OPENAI_RERANK_TOKENIZE,
    AdapterRoute,
    ContainerPlan,
    EngineFamily,
    TokenCount,
    count_by_tokenize,
    flag,
    gpu_count,
    hf_token_env,
    served_names,
)

VERSION = "0.33.0"
DEFAULT_CONFIG = VLLMConfig()  # built once: construction runs CEL rules
DEFAULT_GPU_MEMORY_UTILIZATION = 0.92
# Bits per weight by quantization method: the name's 4-bit or 8-bit family decides (otherwise 8).
QUANT_BITS = {"awq": 4.25, "gptq": 4.25, "mxfp4": 4.25, "fp4": 4.5, "int4": 4.25, "wna16": 4.25,
              "fp8": 8.0, "int8": 8.0, "mxfp8": 8.0}  # fmt: skip
DTYPE_BITS = {"float32": 32.0, "float": 32.0}
# vLLM serves POST /v1/load_lora_adapter and /v1/unload_lora_adapter only with this set (envs.py).
RUNTIME_LORA_ENV = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"
LOAD_ADAPTER_PATH = "/v1/load_lora_adapter"
# How vLLM says an adapter failed to load (exceptions.py, LoRAAdapterNotFoundError; a --lora-modules
# adapter that fails stops the server with it).
LORA_LOAD_FAILED = re.compile(r"Loading lora (\S+) failed: [^\n]*")
UNLOAD_ADAPTER_PATH = "/v1/unload_lora_adapter"


def lora_enabled(spec: InferenceEngineSpec) -> bool:
    """--enable-lora: with adapters, or with LoRA sized ahead of them (so adding the first needs no restart)."""
    cfg = spec.vllm or DEFAULT_CONFIG
    return bool(spec.adapters) or cfg.max_loras is not None or cfg.max_lora_rank is not None


def load_adapter_body(name: str, source: str) -> dict[str, Any]:
    """POST /v1/load_lora_adapter: vLLM resolves `lora_path` as --lora-modules does (a directory, else a
    Hugging Face repo id downloaded into HF_HOME)."""
    return {"lora_name": name, "lora_path": source}


def unload_adapter_body(name: str) -> dict[str, Any]:
    return {"lora_name": name}


def listed_adapters(models_body: bytes) -> dict[str, str]:
    """Adapters on a vLLM /v1/models answer: entries with a parent (the base model), id -> root (the path)."""
    try:
        items = json.loads(models_body).get("data", [])
    except (ValueError, AttributeError):
        return {}
    if not isinstance(items, list):
        return {}
    return {str(i["id"]): str(i.get("root") or "") for i in items if isinstance(i, dict) and i.get("parent")}


class VLLM(EngineFamily):
    family: ClassVar[Family] = Family.VLLM
    title: ClassVar[str] = "vLLM"
    image: ClassVar[str | None] = f"vllm/vllm-openai:v{VERSION}"
    version: ClassVar[str | None] = VERSION
    default_port: ClassVar[int | None] = 8000
    openai_paths: ClassVar[frozenset[str]] = OPENAI_COMMON | OPENAI_RERANK_TOKENIZE | {"/v1/score"}
    metrics_path: ClassVar[str | None] = "/metrics"
    metrics: ClassVar[tuple[str, ...]] = (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:time_to_first_token_seconds",
    )
    tokenize_path: ClassVar[str | None] = "/tokenize"
    managed_flags: ClassVar[frozenset[str]] = managed_flags.VLLM
    caches_prompts: ClassVar[bool] = True
    load_metrics: ClassVar[tuple[str, ...]] = ("vllm:num_requests_running", "vllm:num_requests_waiting")

    def count_tokens(self, body: dict[str, Any], kind: str, model: str) -> TokenCount:
        # vLLM 0.33.0 serves POST /tokenize for chat (the chat template applied, tools included) and
        # for prompts, answering {"count", "max_model_len", "tokens"}.
        return count_by_tokenize(body, kind, model, {"add_generation_prompt": True})

    def container(self, spec: InferenceEngineSpec, cache_path: str, helper_image: str) -> ContainerPlan:
        cfg = spec.vllm or DEFAULT_CONFIG
        port = self.port(spec)
        args = [spec.model.source, "--served-model-name", *served_names(spec), "--host", "0.0.0.0"]
        args += ["--port", str(port)]
        flag(args, "--revision", spec.model.revision)
        args += ["--tensor-parallel-size", str(cfg.tensor_parallel_size)]
        args += ["--pipeline-parallel-size", str(cfg.pipeline_parallel_size)]
        flag(args, "--gpu-memory-utilization", cfg.gpu_memory_utilization)
        flag(args, "--max-model-len", cfg.max_model_len)
        flag(args, "--max-num-seqs", cfg.max_num_seqs)
        flag(args, "--max-num-batched-tokens", cfg.max_num_batched_tokens)
        flag(args, "--dtype", cfg.dtype)
        flag(args, "--quantization", cfg.quantization)
        flag(args, "--kv-cache-dtype", cfg.kv_cache_dtype)
        if cfg.enable_chunked_prefill is not None:
            # vLLM 0.33's pair is --enable-/--disable-chunked-prefill (--no-enable-... is a hidden alias).
            args.append("--enable-chunked-prefill" if cfg.enable_chunked_prefill else "--disable-chunked-prefill")
        if cfg.enable_auto_tool_choice:
            args.append("--enable-auto-tool-choice")
        flag(args, "--tool-call-parser", cfg.tool_call_parser)
        env = [{"name": "HF_HOME", "value": posixpath.join(cache_path, "huggingface")}, *hf_token_env(spec)]
        if lora_enabled(spec):
            args.append("--enable-lora")
            flag(args, "--max-loras", cfg.max_loras)
            flag(args, "--max-lora-rank", cfg.max_lora_rank)
            if cfg.runtime_adapter_updates:
                # The operator loads spec.adapters on each ready replica: a changed list changes no pod.
                env.append({"name": RUNTIME_LORA_ENV, "value": "1"})
            elif spec.adapters:
                args += ["--lora-modules", *(f"{a.name}={a.source}" for a in spec.adapters)]
        args += cfg.extra_args
        extra_volumes: list[dict[str, Any]] = []
        container: dict[str, Any] = {
            "name": "engine",
            "command": ["vllm", "serve"],
            "args": args,
            "env": env,
            "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        }
        if gpu_count(spec) > 1:
            # Tensor/pipeline parallel workers talk through shared memory; the default 64Mi is far too small.
            extra_volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": cfg.shm_size}})
            container["volumeMounts"] = [{"name": "dshm", "mountPath": "/dev/shm"}]
        return ContainerPlan(container, port, self.health_path, extra_volumes=extra_volumes)

    def listed_models(self, spec: InferenceEngineSpec) -> list[str]:
        return served_names(spec)

    def adapter_routes(self, spec: InferenceEngineSpec) -> list[AdapterRoute]:
        # vLLM serves each adapter as a model of its own name (/v1/models lists it with the base as parent).
        return [AdapterRoute(a.name, a.name) for a in spec.adapters]

    def runtime_adapters(self, spec: InferenceEngineSpec) -> bool:
        return lora_enabled(spec) and (spec.vllm or DEFAULT_CONFIG).runtime_adapter_updates

    def loaded_adapters(self, models_body: bytes) -> dict[str, str]:
        return listed_adapters(models_body)

    def failed_adapters(self, spec: InferenceEngineSpec, log: str) -> dict[str, str]:
        names = {a.name for a in spec.adapters}
        return {m[1]: m[0] for m in LORA_LOAD_FAILED.finditer(log) if m[1] in names}

    def context_per_request(self, spec: InferenceEngineSpec) -> int | None:
        return spec.vllm.max_model_len if spec.vllm else None

    def weight_bits(self, spec: InferenceEngineSpec) -> float:
        cfg = spec.vllm
        if cfg and cfg.quantization:
            return next((b for k, b in QUANT_BITS.items() if k in cfg.quantization), 8.0)
        return DTYPE_BITS.get(cfg.dtype or "", 16.0) if cfg else 16.0

    def gpu_memory_share(self, spec: InferenceEngineSpec) -> float:
        # vLLM claims only this share of each GPU.
        return (spec.vllm.gpu_memory_utilization if spec.vllm else None) or DEFAULT_GPU_MEMORY_UTILIZATION

    def kv_cache_fp8(self, spec: InferenceEngineSpec) -> bool:
        return bool(spec.vllm and spec.vllm.kv_cache_dtype and spec.vllm.kv_cache_dtype.startswith("fp8"))

    def kv_tokens(self, spec: InferenceEngineSpec) -> int:
        # vLLM needs room for at least one sequence of max-model-len.
        cfg = spec.vllm
        return (cfg.max_model_len if cfg and cfg.max_model_len else None) or (
            spec.routing.context_length if spec.routing and spec.routing.context_length else 8192
        )


FAMILY = VLLM()

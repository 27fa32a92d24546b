"""vLLM's OpenAI server (`vllm serve`): everything Roundhouse knows about it, for v0.33.0.

Every rendered command line is parsed by vLLM's own `vllm serve` argument parser of that version in
the contract tests (tests/contract, hack/build-vllm-parser.sh).
"""

from __future__ import annotations

import posixpath
from typing import Any, ClassVar

from .. import managed_flags
from ..engine import Family, InferenceEngineSpec, VLLMConfig
from .base import (
    OPENAI_COMMON,
    OPENAI_RERANK_TOKENIZE,
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
        args += cfg.extra_args
        env = [{"name": "HF_HOME", "value": posixpath.join(cache_path, "huggingface")}, *hf_token_env(spec)]
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

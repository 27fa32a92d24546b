"""SGLang's OpenAI server (`sglang serve`): everything Roundhouse knows about it, for v0.5.23.

Every rendered command line is parsed by SGLang's own `prepare_server_args` of that version in the
contract tests (tests/contract/test_sglang.py, hack/build-sglang-parser.sh).
"""

from __future__ import annotations

import posixpath
from typing import Any, ClassVar

from .. import managed_flags
from ..base import SecretKeyRef
from ..engine import Family, InferenceEngineSpec, SGLangConfig
from .base import (
    OPENAI_COMMON,
    OPENAI_RERANK_TOKENIZE,
    AdapterRoute,
    ContainerPlan,
    EngineFamily,
    TokenCount,
    count_by_tokenize,
    flag,
    hf_token_env,
)

VERSION = "0.5.23"
DEFAULT_CONFIG = SGLangConfig()  # built once: construction runs CEL rules
# SGLang sizes its static pool (weights and KV cache) from the GPU when unset; about this much on a
# large GPU, what the fit estimate assumes.
DEFAULT_MEM_FRACTION_STATIC = 0.88
API_KEY_ENV = "SGLANG_API_KEY"
QUANT_BITS = {"awq": 4.25, "gptq": 4.25, "fp4": 4.5, "mxfp4": 4.25, "w4": 4.25, "int4": 4.25, "wna16": 4.25,
              "fp8": 8.0, "int8": 8.0, "mxfp8": 8.0, "gguf": 4.85}  # fmt: skip


class SGLang(EngineFamily):
    family: ClassVar[Family] = Family.SGLANG
    title: ClassVar[str] = "SGLang"
    image: ClassVar[str | None] = f"lmsysorg/sglang:v{VERSION}"
    version: ClassVar[str | None] = VERSION
    default_port: ClassVar[int | None] = 30000
    # /health answers 503 until the server is up and then, by default, runs a one-token generate and
    # waits for it in one-second steps: a probe every second would generate all the time. /ready is
    # the tokenizer manager's own state (up, not paused, not shutting down), answered at once.
    health_path: ClassVar[str] = "/ready"
    gateway_probe_path: ClassVar[str] = "/ready"
    openai_paths: ClassVar[frozenset[str]] = OPENAI_COMMON | OPENAI_RERANK_TOKENIZE | {"/v1/score"}
    metrics_path: ClassVar[str | None] = "/metrics"
    metrics: ClassVar[tuple[str, ...]] = (
        "sglang:num_running_reqs",
        "sglang:num_queue_reqs",
        "sglang:token_usage",
        "sglang:time_to_first_token_seconds",
    )
    tokenize_path: ClassVar[str | None] = "/tokenize"
    managed_flags: ClassVar[frozenset[str]] = managed_flags.SGLANG
    caches_prompts: ClassVar[bool] = True  # RadixAttention reuses every cached prefix
    load_metrics: ClassVar[tuple[str, ...]] = ("sglang:num_running_reqs", "sglang:num_queue_reqs")

    def count_tokens(self, body: dict[str, Any], kind: str, model: str) -> TokenCount:
        # SGLang 0.5.23's POST /tokenize takes a chat's messages (rendered as for a chat completion when
        # add_generation_prompt is omitted, tools included) or a prompt, answering as vLLM does.
        return count_by_tokenize(body, kind, model, {})

    def container(self, spec: InferenceEngineSpec, cache_path: str, helper_image: str) -> ContainerPlan:
        cfg = spec.sglang or DEFAULT_CONFIG
        port = self.port(spec)
        # --model-type llm: `sglang serve` would otherwise fetch the model's model_index.json from the
        # Hub first, to tell a diffusion model from a language model.
        args = ["--model-type", "llm", "--model-path", spec.model.source]
        args += ["--served-model-name", spec.model.served_name, "--host", "0.0.0.0", "--port", str(port)]
        flag(args, "--revision", spec.model.revision)
        args += ["--tp-size", str(cfg.tensor_parallel_size), "--dp-size", str(cfg.data_parallel_size)]
        args += ["--pp-size", str(cfg.pipeline_parallel_size)]
        flag(args, "--context-length", cfg.context_length)
        flag(args, "--mem-fraction-static", cfg.mem_fraction_static)
        flag(args, "--max-running-requests", cfg.max_running_requests)
        flag(args, "--chunked-prefill-size", cfg.chunked_prefill_size)
        flag(args, "--kv-cache-dtype", cfg.kv_cache_dtype)
        flag(args, "--quantization", cfg.quantization)
        if cfg.metrics:
            args.append("--enable-metrics")
        if spec.adapters:
            # Loaded at start-up: SGLang infers the largest rank and the target modules from them.
            args += ["--enable-lora", "--lora-paths", *(f"{a.name}={a.source}" for a in spec.adapters)]
        env = [{"name": "HF_HOME", "value": posixpath.join(cache_path, "huggingface")}, *hf_token_env(spec)]
        if ref := cfg.api_key_secret_ref:
            # The kubelet expands $(VAR) in args from the container's environment: no shell.
            env.append({"name": API_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
            args += ["--api-key", f"$({API_KEY_ENV})"]
        args += cfg.extra_args
        container: dict[str, Any] = {
            "name": "engine",
            "command": ["sglang", "serve"],
            "args": args,
            "env": env,
            "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        }
        # SGLang's processes (tokenizer, scheduler, detokenizer, and one worker per GPU) share tensors
        # through /dev/shm, and its docs run the container with a large --shm-size: the default 64Mi
        # is far too small.
        extra_volumes = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}]
        container["volumeMounts"] = [{"name": "dshm", "mountPath": "/dev/shm"}]
        return ContainerPlan(container, port, self.health_path, extra_volumes=extra_volumes)

    def adapter_routes(self, spec: InferenceEngineSpec) -> list[AdapterRoute]:
        # SGLang's OpenAI server reads "base:adapter" in "model" as that adapter of the base model.
        return [AdapterRoute(a.name, f"{spec.model.served_name}:{a.name}") for a in spec.adapters]

    def api_key_ref(self, spec: InferenceEngineSpec) -> SecretKeyRef | None:
        return spec.sglang.api_key_secret_ref if spec.sglang else None

    def context_per_request(self, spec: InferenceEngineSpec) -> int | None:
        return spec.sglang.context_length if spec.sglang else None

    def weight_bits(self, spec: InferenceEngineSpec) -> float:
        cfg = spec.sglang
        if cfg and cfg.quantization and cfg.quantization != "unquant":
            return next((b for k, b in QUANT_BITS.items() if k in cfg.quantization), 8.0)
        return 16.0

    def gpu_memory_share(self, spec: InferenceEngineSpec) -> float:
        return (spec.sglang.mem_fraction_static if spec.sglang else None) or DEFAULT_MEM_FRACTION_STATIC

    def kv_cache_fp8(self, spec: InferenceEngineSpec) -> bool:
        dtype = spec.sglang.kv_cache_dtype if spec.sglang else None
        return bool(dtype and (dtype.startswith("fp8") or dtype in ("mxfp8", "nvfp4", "fp4_mx_block16")))

    def model_copies(self, spec: InferenceEngineSpec) -> int:
        return spec.sglang.data_parallel_size if spec.sglang else 1

    def kv_tokens(self, spec: InferenceEngineSpec) -> int:
        cfg = spec.sglang
        return (cfg.context_length if cfg and cfg.context_length else None) or (
            spec.routing.context_length if spec.routing and spec.routing.context_length else 8192
        )


FAMILY = SGLang()

"""InferenceEngine: one model served by one engine family."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import Field, field_validator
from pydantic.config import JsonDict

from . import managed_flags
from .autoscaling import Autoscaling, ScalingStatus, StoppingReplica
from .base import ApiModel, CelRule, Condition, ObjectMeta, SecretKeyRef

GROUP = "roundhouse.dev"
VERSION = "v1alpha1"
API_VERSION: Final = "roundhouse.dev/v1alpha1"


class Family(StrEnum):
    """Engine families; `external` is an OpenAI-compatible API that runs outside the cluster."""

    VLLM = "vllm"
    LLAMACPP = "llamacpp"
    OLLAMA = "ollama"
    SGLANG = "sglang"
    EXTERNAL = "external"


class Phase(StrEnum):
    PENDING = "Pending"
    STARTING = "Starting"
    READY = "Ready"
    DEGRADED = "Degraded"
    FAILED = "Failed"
    STANDBY = "Standby"
    DRAINING = "Draining"  # onDemand: being stopped to free GPUs; in-flight requests finish, no new ones


class Capability(StrEnum):
    TOOLS = "tools"
    JSON_SCHEMA = "jsonSchema"
    VISION = "vision"
    EMBEDDINGS = "embeddings"


URL_PATTERN = r"^https?://[^\s/]+(/\S*)?$"
# A Kubernetes resource quantity (k8s.io/apimachinery's grammar): 500m, 2, 1.5, 16Gi, 1e3.
# No backslashes: the same text is a Python regex and, inside a CEL string literal, an RE2 one.
QUANTITY_PATTERN = r"^[+-]?([0-9]+([.][0-9]*)?|[.][0-9]+)(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?[0-9]+))?$"
# A name as clients send it in "model": no whitespace, bounded so CEL cost stays low.
ServedName = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^\S+$")]
Url = Annotated[str, Field(min_length=1, max_length=2048, pattern=URL_PATTERN)]
# What reaches an engine's command line or a helper's arguments: never shell text, but refused at
# apply all the same (whitespace, quotes, backticks, $, ;, |, &, <, >, parentheses, braces, backslash).
NO_SHELL_PATTERN = r"^[^\s\"'`$;|&<>(){}\\]+$"
# A container image reference: [host[:port]/]path[:tag][@sha256:digest], lower-case path components.
IMAGE_PATTERN = (
    r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$"
)
# The engine's name is its Service's name and a label value: a DNS-1035 label of at most 63 characters.
NAME_RULE = CelRule(
    "self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
    "metadata.name must be at most 63 lower-case letters, digits and '-', start with a letter and end with a"
    " letter or digit: it names the engine's Service and labels",
)
# Bounded so the CEL rule over extraArgs stays within the API server's cost budget.
ExtraArg = Annotated[str, Field(max_length=512)]
FREE_FORM: JsonDict = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
IntOrString: JsonDict = {"x-kubernetes-int-or-string": True}


class ModelSource(ApiModel):
    """Where the weights come from and the names clients use for them."""

    source: str = Field(
        min_length=1,
        max_length=2048,
        pattern=NO_SHELL_PATTERN,
        description=(
            "The weights: a Hugging Face repo id (vLLM), a GGUF file path or URL — for a split GGUF the"
            " first shard, *-00001-of-0000N.gguf — (llama.cpp), an Ollama tag (Ollama), or a path on the"
            " model cache volume."
        ),
    )
    served_name: ServedName = Field(description='The name clients put in "model".')
    aliases: list[ServedName] = Field(
        default_factory=list, max_length=16, description="Other names clients may use for this model."
    )
    revision: str | None = Field(
        default=None, max_length=256, description="Hugging Face revision (branch, tag or commit)."
    )
    hf_token_secret_ref: SecretKeyRef | None = Field(
        default=None,
        alias="hfTokenSecretRef",
        description="Secret key holding a Hugging Face token; exposed to the engine as HF_TOKEN.",
    )
    parameters_billions: float | None = Field(
        default=None,
        gt=0,
        description="Parameter count in billions, for the ModelFits estimate; defaults to the size in the"
        " model name (e.g. 70B).",
    )


# An adapter's name is what clients put in "model" and appears on engines' command lines as NAME=PATH
# (vLLM, SGLang): no '=', no ':' (SGLang reads "base:adapter" in "model"), no whitespace.
ADAPTER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
# Its source reaches command lines as NAME=PATH (vLLM splits on '=') and comma lists (llama.cpp's
# --lora): neither character, and nothing a shell would read.
ADAPTER_SOURCE_PATTERN = r"^[^\s\"'`$;|&<>(){}\\=,]+$"
MAX_ADAPTERS = 32


class Adapter(ApiModel):
    """A LoRA adapter served beside the base model, under a name of its own."""

    name: str = Field(
        min_length=1,
        max_length=128,
        pattern=ADAPTER_NAME_PATTERN,
        description='The name clients put in "model" to use the adapter: letters, digits, ".", "_" and "-".',
    )
    source: str = Field(
        min_length=1,
        max_length=2048,
        pattern=ADAPTER_SOURCE_PATTERN,
        description=(
            "The adapter's weights, like spec.model.source. vLLM, SGLang: a Hugging Face repo id (downloaded into"
            " the model cache) or a directory in the container, passed as is. llama.cpp: a LoRA GGUF file, a"
            " relative path being on the model cache volume, or an https:// URL fetched into it."
        ),
    )
    scale: float | None = Field(
        default=None,
        gt=0,
        le=100,
        description="How strongly the adapter is applied (llama.cpp only, sent per request; default 1).",
    )


class ModelCache(ApiModel):
    """Volume for downloaded weights; a PersistentVolumeClaim keeps them across restarts."""

    size: str | None = Field(
        default=None,
        max_length=64,
        description="Size of a PersistentVolumeClaim the operator creates (e.g. 200Gi).",
        json_schema_extra=IntOrString,
    )
    storage_class_name: str | None = Field(default=None, max_length=253, description="StorageClass of that claim.")
    existing_claim: str | None = Field(
        default=None, max_length=253, description="Use this existing PersistentVolumeClaim instead."
    )
    mount_path: str = Field(default="/models", max_length=1024, description="Where the cache is mounted.")

    cel_rules: ClassVar[list[CelRule]] = [
        CelRule(
            "!(has(self.size) && has(self.existingClaim))",
            "spec.cache: set either size (a new claim) or existingClaim, not both",
        ),
        CelRule(
            f"!has(self.size) || type(self.size) == int || string(self.size).matches('{QUANTITY_PATTERN}')",
            "spec.cache.size must be a Kubernetes quantity (e.g. 200Gi)",
            ".size",
        ),
    ]


class VLLMConfig(ApiModel):
    """vLLM flags; unset fields keep vLLM's own defaults."""

    tensor_parallel_size: int = Field(default=1, ge=1, le=64, description="--tensor-parallel-size.")
    pipeline_parallel_size: int = Field(default=1, ge=1, le=64, description="--pipeline-parallel-size.")
    gpu_memory_utilization: float | None = Field(
        default=None, gt=0, le=1, description="--gpu-memory-utilization, in (0, 1]."
    )
    max_model_len: int | None = Field(default=None, ge=1, description="--max-model-len.")
    max_num_seqs: int | None = Field(default=None, ge=1, description="--max-num-seqs.")
    max_num_batched_tokens: int | None = Field(default=None, ge=1, description="--max-num-batched-tokens.")
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] | None = Field(
        default=None, description="--dtype."
    )
    # vLLM 0.33.0's own lists (model_executor/layers/quantization, config/cache.py), which its start-up
    # checks enforce; its parser takes any string, so the CRD is where a wrong name is caught. The
    # deprecated fbgemm_fp8 and fp_quant (they need --allow-deprecated-quantization) are left out.
    quantization: (
        Literal[
            "awq",
            "auto_awq",
            "awq_marlin",
            "gptq",
            "auto_gptq",
            "gptq_marlin",
            "fp8",
            "fp8_per_tensor",
            "fp8_per_block",
            "fp8_per_channel",
            "modelopt",
            "modelopt_fp4",
            "modelopt_mxfp8",
            "modelopt_mixed",
            "humming",
            "compressed-tensors",
            "experts_int8",
            "quark",
            "moe_wna16",
            "torchao",
            "inc",
            "mxfp4",
            "gpt_oss_mxfp4",
            "deepseek_v4_fp8",
            "online",
            "int8_per_channel_weight_only",
            "nvfp4_per_token",
            "mxfp8",
        ]
        | None
    ) = Field(default=None, description="--quantization (the methods vLLM 0.33.0 knows).")
    kv_cache_dtype: Literal["auto", "bfloat16", "float16", "fp8", "fp8_e4m3", "fp8_e5m2"] | None = Field(
        default=None, description="--kv-cache-dtype."
    )
    enable_chunked_prefill: bool | None = Field(default=None, description="--enable-chunked-prefill.")
    enable_auto_tool_choice: bool | None = Field(
        default=None, description="--enable-auto-tool-choice; needs toolCallParser."
    )
    tool_call_parser: str | None = Field(
        default=None, max_length=64, description="--tool-call-parser (e.g. hermes, llama3_json, mistral)."
    )
    max_loras: int | None = Field(
        default=None, ge=1, le=256, description="--max-loras: adapters in one batch (vLLM's default: 1)."
    )
    # vLLM 0.33.0's choices (config/lora.py).
    max_lora_rank: Literal[1, 8, 16, 32, 64, 128, 256, 320, 512] | None = Field(
        default=None, description="--max-lora-rank: the largest adapter rank (vLLM's default: 16)."
    )
    runtime_adapter_updates: bool = Field(
        default=True,
        description="Load and unload spec.adapters on running replicas (POST /v1/load_lora_adapter) instead of"
        " restarting them with --lora-modules; LoRA is enabled (--enable-lora) whenever spec.adapters, maxLoras or"
        " maxLoraRank is set, so an engine that will get adapters later can start with maxLoraRank.",
    )
    nodes: int = Field(
        default=1, ge=1, le=64, description="Nodes per replica; above 1 runs multi-node with LeaderWorkerSet."
    )
    shm_size: str = Field(
        default="20Gi",
        max_length=64,
        description="Size of the in-memory /dev/shm given to multi-GPU engines.",
    )
    extra_args: list[ExtraArg] = Field(default_factory=list, max_length=64, description="Appended to the command.")

    cel_rules: ClassVar[list[CelRule]] = [
        CelRule(
            "!has(self.enableAutoToolChoice) || !self.enableAutoToolChoice || has(self.toolCallParser)",
            "spec.vllm.toolCallParser is required when spec.vllm.enableAutoToolChoice is true",
            ".toolCallParser",
        ),
        CelRule(
            "!has(self.enableChunkedPrefill) || self.enableChunkedPrefill || !has(self.maxNumBatchedTokens) ||"
            " !has(self.maxModelLen) || self.maxNumBatchedTokens >= self.maxModelLen",
            "spec.vllm.maxNumBatchedTokens must be at least spec.vllm.maxModelLen when"
            " spec.vllm.enableChunkedPrefill is false (vLLM refuses to start otherwise)",
            ".maxNumBatchedTokens",
        ),
        CelRule(
            "!has(self.maxNumBatchedTokens) || !has(self.maxNumSeqs) || self.maxNumBatchedTokens >= self.maxNumSeqs",
            "spec.vllm.maxNumBatchedTokens must be at least spec.vllm.maxNumSeqs (vLLM refuses to start otherwise)",
            ".maxNumBatchedTokens",
        ),
        CelRule(*managed_flags.cel_no_repeat("vllm", managed_flags.VLLM), ".extraArgs"),
    ]


class LlamaCppConfig(ApiModel):
    """llama.cpp llama-server flags; unset fields keep llama-server's own defaults."""

    context_size: int | None = Field(default=None, ge=0, description="--ctx-size; 0 means from the model.")
    gpu_layers: int | str | None = Field(
        default=None,
        description="--n-gpu-layers: a number, 'auto' or 'all'.",
        json_schema_extra=IntOrString,
    )
    threads: int | None = Field(default=None, ge=1, le=1024, description="--threads.")
    parallel: int | None = Field(default=None, ge=1, le=1024, description="--parallel (slots).")
    cont_batching: bool | None = Field(default=None, description="--cont-batching / --no-cont-batching.")
    flash_attention: Literal["on", "off", "auto"] | None = Field(default=None, description="--flash-attn.")
    metrics: bool = Field(default=True, description="--metrics (Prometheus endpoint; the gateway reads it).")
    tensor_split: list[float] | None = Field(
        default=None, min_length=1, max_length=64, description="--tensor-split: one proportion per GPU."
    )
    # llama.cpp's experimental "tensor" split needs a GPU device even to load: the contract tests cannot
    # run it on the CPU build, so the CRD does not offer it.
    split_mode: Literal["none", "layer", "row"] | None = Field(default=None, description="--split-mode.")
    batch_size: int | None = Field(default=None, ge=1, description="--batch-size.")
    rope_freq_base: float | None = Field(default=None, gt=0, description="--rope-freq-base.")
    rope_freq_scale: float | None = Field(default=None, gt=0, description="--rope-freq-scale.")
    load_mode: Literal["auto", "none", "mmap", "mlock", "mmap+mlock", "dio"] | None = Field(
        default=None, description="--load-mode: how llama-server loads the weights (auto: mmap where possible)."
    )
    mlock: bool | None = Field(
        default=None,
        description="Keep the weights in RAM: rendered as --load-mode mmap+mlock (with noMmap: mlock), since"
        " llama.cpp replaced --mlock by --load-mode.",
    )
    no_mmap: bool | None = Field(
        default=None,
        description="Do not memory-map the weights: rendered as --load-mode none (with mlock: mlock), since"
        " llama.cpp replaced --no-mmap by --load-mode.",
    )
    numa: Literal["distribute", "isolate", "numactl"] | None = Field(default=None, description="--numa.")
    port: int = Field(default=8080, ge=1, le=65535, description="--port (always passed explicitly).")
    extra_args: list[ExtraArg] = Field(default_factory=list, max_length=64, description="Appended to the command.")

    cel_rules: ClassVar[list[CelRule]] = [
        CelRule(
            "!has(self.gpuLayers) || type(self.gpuLayers) == int || self.gpuLayers in ['auto', 'all']",
            "spec.llamacpp.gpuLayers must be a number of layers, 'auto' or 'all'",
            ".gpuLayers",
        ),
        CelRule(
            "!has(self.gpuLayers) || type(self.gpuLayers) != int || self.gpuLayers >= 0",
            "spec.llamacpp.gpuLayers must not be negative",
            ".gpuLayers",
        ),
        CelRule(
            "!has(self.loadMode) || (!has(self.mlock) && !has(self.noMmap))",
            "spec.llamacpp.loadMode replaces mlock and noMmap: set loadMode alone",
            ".loadMode",
        ),
        CelRule(*managed_flags.cel_no_repeat("llamacpp", managed_flags.LLAMACPP), ".extraArgs"),
    ]


class OllamaConfig(ApiModel):
    """Ollama server settings (environment variables)."""

    num_parallel: int | None = Field(default=None, ge=1, le=1024, description="OLLAMA_NUM_PARALLEL.")
    keep_alive: str | None = Field(
        default=None,
        max_length=32,
        pattern=r"^-?[0-9]+(ns|us|ms|s|m|h)?$",
        description="OLLAMA_KEEP_ALIVE, e.g. 5m; negative keeps the model loaded forever.",
    )
    max_loaded_models: int | None = Field(default=None, ge=0, description="OLLAMA_MAX_LOADED_MODELS; 0 = auto.")
    max_queue: int | None = Field(default=None, ge=1, description="OLLAMA_MAX_QUEUE.")


class SGLangConfig(ApiModel):
    """SGLang flags (`sglang serve`); unset fields keep SGLang's own defaults."""

    tensor_parallel_size: int = Field(default=1, ge=1, le=64, description="--tp-size.")
    data_parallel_size: int = Field(default=1, ge=1, le=64, description="--dp-size (model copies in one pod).")
    pipeline_parallel_size: int = Field(default=1, ge=1, le=64, description="--pp-size.")
    context_length: int | None = Field(default=None, ge=1, description="--context-length; unset: the model's.")
    mem_fraction_static: float | None = Field(
        default=None, gt=0, lt=1, description="--mem-fraction-static: the GPU memory share for weights and KV cache."
    )
    max_running_requests: int | None = Field(default=None, ge=1, description="--max-running-requests.")
    chunked_prefill_size: int | None = Field(
        default=None, ge=-1, description="--chunked-prefill-size in tokens; -1 turns chunked prefill off."
    )
    # SGLang 0.5.23's own choices (its parser refuses anything else).
    kv_cache_dtype: (
        Literal["auto", "fp8_e5m2", "fp8_e4m3", "mxfp8", "bf16", "bfloat16", "nvfp4", "fp4_mx_block16"] | None
    ) = Field(default=None, description="--kv-cache-dtype.")
    quantization: (
        Literal[
            "awq", "fp8", "mxfp8", "gptq", "gptq_marlin", "awq_marlin", "bitsandbytes", "gguf", "modelopt",
            "modelopt_fp8", "modelopt_fp4", "nvfp4_online", "modelopt_mixed", "petit_nvfp4", "w8a8_int8",
            "w8a8_fp8", "moe_wna16", "w4afp8", "mxfp4", "auto-round", "auto-round-int8", "compressed-tensors",
            "modelslim", "mxfp_w4a8", "quark", "quark_int4fp8_moe", "quark_mxfp4", "unquant", "humming",
        ]
        | None
    ) = Field(default=None, description="--quantization (SGLang 0.5.23's methods, but Apple's mlx_*).")  # fmt: skip
    metrics: bool = Field(default=True, description="--enable-metrics (Prometheus endpoint; the gateway reads it).")
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        alias="apiKeySecretRef",
        description="Secret key holding an API key the engine requires (--api-key); the gateway sends it.",
    )
    extra_args: list[ExtraArg] = Field(default_factory=list, max_length=64, description="Appended to the command.")

    cel_rules: ClassVar[list[CelRule]] = [
        CelRule(
            "!has(self.chunkedPrefillSize) || self.chunkedPrefillSize != 0",
            "spec.sglang.chunkedPrefillSize must be a number of tokens, or -1 to turn chunked prefill off",
            ".chunkedPrefillSize",
        ),
        CelRule(*managed_flags.cel_no_repeat("sglang", managed_flags.SGLANG), ".extraArgs"),
    ]


class ExternalConfig(ApiModel):
    """An OpenAI-compatible API outside the cluster; no workload is created."""

    base_url: Url = Field(alias="baseURL", description="Base URL including /v1, e.g. https://api.openai.com/v1.")
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None, alias="apiKeySecretRef", description="Secret key holding the API key (sent as Bearer)."
    )
    timeout_seconds: float = Field(default=600, gt=0, le=3600, description="Whole-request timeout.")
    model_name: str | None = Field(
        default=None, max_length=253, description="Model name the provider expects, if not spec.model.source."
    )


class Timeouts(ApiModel):
    """Gateway timeouts towards this engine."""

    connect_seconds: float = Field(default=5, gt=0, le=300, description="TCP connect.")
    first_byte_seconds: float = Field(default=120, gt=0, le=3600, description="Request sent to first byte.")
    idle_seconds: float = Field(default=60, gt=0, le=3600, description="Silence allowed between chunks.")


class Shadow(ApiModel):
    """A copy of another model's traffic for this engine: its answers are compared, never returned."""

    of: str = Field(min_length=1, max_length=253, description="The served name (or alias) whose requests are copied.")
    percent: float = Field(gt=0, le=100, description="The share of that model's requests copied here, in percent.")
    max_in_flight: int = Field(
        default=4, ge=1, le=1024,
        description="Copies in flight at most; more are shed (and counted), so a slow shadow never builds a queue.",
    )  # fmt: skip


class Routing(ApiModel):
    """What the gateway needs to route well."""

    priority: int = Field(default=0, ge=-1000, le=1000, description="Higher is tried first.")
    weight: int = Field(default=100, ge=0, le=10000, description="Share of traffic among equal candidates.")
    max_concurrency: int | None = Field(
        default=None,
        ge=1,
        description="In-flight requests per replica before the gateway tries the next engine.",
    )
    capabilities: list[Capability] = Field(
        default_factory=list,
        max_length=8,
        description="Features this engine serves (tools, jsonSchema, ...).",
    )
    context_length: int | None = Field(
        default=None, ge=1, description="Context window in tokens; defaults to the engine's own setting."
    )
    task_types: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list,
        max_length=16,
        description="Task types this engine prefers (e.g. chat, extraction).",
    )
    fallback: list[Annotated[str, Field(max_length=253)]] = Field(
        default_factory=list,
        max_length=16,
        description="Engines (names) to try, in order, when this one cannot serve.",
    )
    timeouts: Timeouts | None = Field(default=None, description="Gateway timeouts towards this engine.")
    shadow: Shadow | None = Field(
        default=None,
        description="Receive a copy of another model's requests (answers compared at /admin/compare, never sent"
        " to clients).",
    )


class Probes(ApiModel):
    """Probe sizing; large models take minutes to load."""

    startup_timeout_seconds: int = Field(
        default=1800,
        ge=10,
        le=86400,
        description="How long a replica may take to load before it is restarted.",
    )
    period_seconds: int = Field(default=10, ge=1, le=300, description="Probe period after startup.")


class LocalProcess(ApiModel):
    """How a standalone gateway runs an engine on its own machine (mode onDemand); ignored in a cluster."""

    command: list[str] = Field(
        min_length=1, max_length=256,
        description="The program and its arguments, run without a shell; {port} becomes the port the gateway chose.",
        json_schema_extra={"items": {"type": "string", "maxLength": 4096}},
    )  # fmt: skip
    env: dict[str, str] = Field(default_factory=dict, description="More environment variables for it.")


# What the families can do with spec.adapters, refused at apply where they cannot.
ADAPTER_RULES = [
    CelRule(
        "!has(self.adapters) || self.adapters.all(a, self.adapters.exists_one(b, b.name == a.name))",
        "spec.adapters: each adapter needs a name of its own",
        ".adapters",
    ),
    CelRule(
        "!has(self.adapters) || self.adapters.all(a, a.name != self.model.servedName &&"
        " (!has(self.model.aliases) || !(a.name in self.model.aliases)))",
        "spec.adapters[].name must differ from spec.model.servedName and spec.model.aliases: clients choose an"
        " adapter by its name",
        ".adapters",
    ),
    CelRule(
        "self.engine != 'ollama' || !has(self.adapters) || self.adapters.size() == 0",
        'spec.adapters: Ollama 0.17.4 cannot serve LoRA adapters (its new runner answers "loras are not yet'
        ' implemented"): use engine vllm, llamacpp or sglang',
        ".adapters",
    ),
    CelRule(
        "self.engine != 'external' || !has(self.adapters) || self.adapters.size() == 0",
        "spec.adapters is not used when spec.engine is 'external': Roundhouse loads adapters only on engines it knows",
        ".adapters",
    ),
    CelRule(
        "self.engine != 'llamacpp' || has(self.endpoints) || !has(self.adapters) ||"
        " self.adapters.all(a, a.source.matches('(?i)\\\\.gguf$'))",
        "spec.adapters[].source must be a LoRA GGUF file or URL (*.gguf) when spec.engine is 'llamacpp'",
        ".adapters",
    ),
    CelRule(
        "self.engine != 'llamacpp' || !has(self.adapters) ||"
        " self.adapters.all(a, a.source.matches('(?i)^(https?://[^/]+/)?[^:]*$'))",
        "spec.adapters[].source must not contain ':' (but in a URL's scheme and port) when spec.engine is"
        " 'llamacpp': llama-server reads --lora-scaled as FILE:SCALE",
        ".adapters",
    ),
    CelRule(
        "self.engine == 'llamacpp' || !has(self.adapters) || self.adapters.all(a, !a.source.matches('(?i)^https?://'))",
        "spec.adapters[].source must be a Hugging Face repo id or a directory for vLLM and SGLang: only llama.cpp's"
        " GGUF adapters are fetched from a URL",
        ".adapters",
    ),
    CelRule(
        "self.engine == 'llamacpp' || !has(self.adapters) || self.adapters.all(a, !has(a.scale))",
        "spec.adapters[].scale is applied only by llama.cpp (per request): vLLM and SGLang apply an adapter as trained",
        ".adapters",
    ),
]


class InferenceEngineSpec(ApiModel):
    """Desired state of an InferenceEngine."""

    engine: Family = Field(description="Engine family: vllm, llamacpp, ollama, sglang or external.")
    model: ModelSource = Field(description="Weights and the names clients use.")
    replicas: int = Field(default=1, ge=0, le=1000, description="Replicas while this engine is active.")
    autoscaling: Autoscaling | None = Field(
        default=None,
        description="Replicas follow the load (the gateways' requests running and waiting) instead of spec.replicas."
        " Leave it unset when an HPA or KEDA drives the scale subresource.",
    )
    gpus: int | None = Field(
        default=None, ge=0, le=64, description="nvidia.com/gpu per replica; default 1 (0 for external)."
    )
    gpu_product: str | None = Field(
        default=None, max_length=253, description="Require nodes with this nvidia.com/gpu.product label."
    )
    gpu_memory_mi_b: int | None = Field(
        default=None,
        alias="gpuMemoryMiB",
        ge=1,
        description="Memory of each GPU in MiB: nodes must have at least this much (nvidia.com/gpu.memory),"
        " and ModelFits uses it when nodes do not say.",
    )
    node_selector: dict[str, str] = Field(default_factory=dict, description="Passed to the pod.")
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Passed to the pod, after the default nvidia.com/gpu toleration.",
        json_schema_extra={"items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    )
    affinity: dict[str, Any] | None = Field(default=None, description="Passed to the pod.", json_schema_extra=FREE_FORM)
    resources: dict[str, Any] | None = Field(
        default=None, description="Container resources beyond the GPUs.", json_schema_extra=FREE_FORM
    )
    env: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Extra container environment (Kubernetes EnvVar).",
        json_schema_extra={
            "items": {"type": "object", "required": ["name"], "x-kubernetes-preserve-unknown-fields": True}
        },
    )
    image: str | None = Field(
        default=None, max_length=1024, pattern=IMAGE_PATTERN, description="Override the family's pinned image."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, description="Pull policy for the engine image."
    )
    cache: ModelCache | None = Field(default=None, description="Model cache volume.")
    probes: Probes | None = Field(default=None, description="Health probe sizing.")
    endpoints: list[Url] | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="URLs of an engine of this family that already runs elsewhere: no workload is created.",
    )
    process: LocalProcess | None = Field(
        default=None,
        description="Standalone gateway only: run this command line instead of the one rendered for the family.",
    )
    vllm: VLLMConfig | None = Field(default=None, description="vLLM settings (engine: vllm only).")
    llamacpp: LlamaCppConfig | None = Field(default=None, description="llama-server settings (engine: llamacpp only).")
    ollama: OllamaConfig | None = Field(default=None, description="Ollama settings (engine: ollama only).")
    sglang: SGLangConfig | None = Field(default=None, description="SGLang settings (engine: sglang only).")
    external: ExternalConfig | None = Field(default=None, description="External API (engine: external only).")
    routing: Routing | None = Field(default=None, description="Routing hints for the gateway.")
    adapters: list[Adapter] = Field(
        default_factory=list,
        max_length=MAX_ADAPTERS,
        description="LoRA adapters served beside the model, each under its own name (vLLM, llama.cpp, SGLang).",
    )

    @field_validator("resources")
    @classmethod
    def _quantities(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # The API server answers a bad quantity with a 500 ("unable to convert"), naming no field: say it here.
        for section in ("requests", "limits"):
            for name, qty in ((value or {}).get(section) or {}).items():
                number = isinstance(qty, int | float) and not isinstance(qty, bool)
                ok = number or (isinstance(qty, str) and re.match(QUANTITY_PATTERN, qty))
                if not ok:
                    raise ValueError(
                        f"spec.resources.{section}.{name}: {qty!r} is not a Kubernetes quantity (e.g. 500m, 2, 16Gi)"
                    )
        return value

    cel_rules: ClassVar[list[CelRule]] = [
        *(
            CelRule(
                f"!has(self.{fam}) || self.engine == '{fam}'",
                f"spec.{fam} is allowed only when spec.engine is '{fam}'",
                f".{fam}",
            )
            for fam in ("vllm", "llamacpp", "ollama", "sglang", "external")
        ),
        CelRule(
            "self.engine != 'external' || has(self.external)",
            "spec.external.baseURL is required when spec.engine is 'external'",
        ),
        CelRule(
            "self.engine != 'external' || !has(self.gpus) || self.gpus == 0",
            "spec.gpus must be 0 or unset when spec.engine is 'external': it runs no workload",
            ".gpus",
        ),
        CelRule(
            "!has(self.process) || (self.engine != 'external' && !has(self.endpoints))",
            "spec.process runs the engine locally: not with spec.endpoints or spec.engine 'external'",
            ".process",
        ),
        CelRule(
            "self.engine != 'external' || !has(self.endpoints)",
            "spec.endpoints is not used when spec.engine is 'external': set spec.external.baseURL",
            ".endpoints",
        ),
        CelRule(
            "self.engine != 'vllm' || (has(self.gpus) && self.gpus == 0) || "
            "(has(self.vllm) ? self.vllm.tensorParallelSize * self.vllm.pipelineParallelSize : 1) == "
            "(has(self.gpus) ? self.gpus : 1) * (has(self.vllm) ? self.vllm.nodes : 1)",
            "spec.vllm.tensorParallelSize * spec.vllm.pipelineParallelSize must equal spec.gpus"
            " (times spec.vllm.nodes for a multi-node engine)",
            ".gpus",
        ),
        CelRule(
            "self.engine != 'sglang' || (has(self.gpus) && self.gpus == 0) || (has(self.sglang) ? "
            "self.sglang.tensorParallelSize * self.sglang.dataParallelSize * self.sglang.pipelineParallelSize : 1)"
            " == (has(self.gpus) ? self.gpus : 1)",
            "spec.sglang.tensorParallelSize * dataParallelSize * pipelineParallelSize must equal spec.gpus",
            ".gpus",
        ),
        CelRule(
            "self.engine != 'ollama' || self.model.source.matches('^[A-Za-z0-9][A-Za-z0-9._:/+-]*$')",
            "spec.model.source must be an Ollama model name (e.g. llama3.1:8b or host/namespace/model:tag)"
            " when spec.engine is 'ollama'",
            ".model.source",
        ),
        CelRule(
            "self.engine != 'llamacpp' || has(self.endpoints) || self.model.source.matches('(?i)\\\\.gguf$')",
            "spec.model.source must be a GGUF file, URL or first shard (*.gguf) when spec.engine is 'llamacpp'",
            ".model.source",
        ),
        CelRule(
            "self.engine != 'llamacpp' || !self.model.source.matches('(?i)-[0-9]{5}-of-[0-9]{5}\\\\.gguf$') || "
            "self.model.source.matches('(?i)-00001-of-[0-9]{5}\\\\.gguf$')",
            "spec.model.source must name the first shard (-00001-of-0000N.gguf) of a split GGUF",
            ".model.source",
        ),
        *ADAPTER_RULES,
        CelRule(
            "!has(self.routing) || !has(self.routing.shadow) || (self.routing.shadow.of != self.model.servedName"
            " && (!has(self.model.aliases) || !(self.routing.shadow.of in self.model.aliases)))",
            "spec.routing.shadow.of must name another model than this engine's own servedName and aliases: an engine"
            " shadows a model it does not serve",
            ".routing.shadow.of",
        ),
        CelRule(
            "!has(self.autoscaling) || (self.engine != 'external' && !has(self.endpoints))",
            "spec.autoscaling needs a workload the operator runs: not with spec.endpoints or spec.engine 'external'",
            ".autoscaling",
        ),
        CelRule(
            "!has(self.llamacpp) || !has(self.llamacpp.tensorSplit) || "
            "self.llamacpp.tensorSplit.size() == (has(self.gpus) ? self.gpus : 1)",
            "spec.llamacpp.tensorSplit must have one entry per GPU (spec.gpus)",
            ".llamacpp.tensorSplit",
        ),
    ]


class AdapterStatus(ApiModel):
    """Where one adapter of spec.adapters is loaded."""

    name: str = Field(description="The adapter's name.")
    loaded_replicas: int = Field(default=0, ge=0, description="Ready replicas that serve it.")
    message: str | None = Field(default=None, description="Why it is not loaded everywhere: the engine's own words.")


class EngineStatus(ApiModel):
    """Observed state, written by the operator on the status subresource."""

    phase: Phase | None = Field(default=None, description="Pending, Starting, Ready, Degraded, Failed or Standby.")
    replicas: int | None = Field(default=None, ge=0, description="Replicas that exist.")
    ready_replicas: int | None = Field(default=None, ge=0, description="Replicas that are ready.")
    ready: str | None = Field(default=None, description="readyReplicas/desired, as kubectl get shows it.")
    selector: str | None = Field(default=None, description="Label selector of the pods (for the scale subresource).")
    desired_replicas: int | None = Field(
        default=None, ge=0, description="Replicas the operator set on the workload (the plan's, the autoscaler's)."
    )
    scaling: ScalingStatus | None = Field(
        default=None, description="spec.autoscaling: what the load asks for, what the budget gave, and why."
    )
    stopping: list[StoppingReplica] = Field(
        default_factory=list,
        description="Replicas a scale-down stops: no gateway routes to them, and their pods are deleted once every"
        " gateway reports nothing in flight there (or at the drain deadline).",
    )
    endpoint: str | None = Field(default=None, description="In-cluster URL of the engine's OpenAI API.")
    active: bool | None = Field(default=None, description="Whether the engine mode lets this engine run.")
    observed_generation: int | None = Field(default=None, ge=0, description="Last generation acted on.")
    message: str | None = Field(default=None, description="Why the engine is in this phase.")
    context_per_request: int | None = Field(
        default=None,
        ge=0,
        description="Tokens one request may use (prompt and answer): llama.cpp splits ctxSize over its parallel slots.",
    )
    adapters: list[AdapterStatus] = Field(
        default_factory=list, description="spec.adapters: on how many ready replicas each one is loaded."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="ConfigValid, Scheduled, ModelFits, Ready.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class InferenceEngine(ApiModel):
    """An InferenceEngine resource as stored by the API server."""

    api_version: Literal["roundhouse.dev/v1alpha1"] = Field(default=API_VERSION, alias="apiVersion")
    kind: Literal["InferenceEngine"] = "InferenceEngine"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: InferenceEngineSpec
    status: EngineStatus | None = None

    cel_rules: ClassVar[list[CelRule]] = [NAME_RULE]

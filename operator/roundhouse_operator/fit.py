"""Will the model fit on the GPUs it gets? A rough, explained estimate (the ModelFits condition). Pure.

weights = parameters x bits per weight (from the GGUF quant, vLLM quantization or dtype);
KV cache = tokens of context x bytes per token (fitted to Llama-style models: ~128 KiB/token at
8B, ~320 KiB/token at 70B, in 16-bit); overhead = 1 GiB per GPU for CUDA context and buffers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from roundhouse_api import Family, InferenceEngineSpec
from roundhouse_api.families import FAMILIES, gpu_count

GIB = 1024**3
MIB = 1024**2
OVERHEAD_PER_GPU = 1 * GIB

# Bits per weight of common GGUF quantizations (llama.cpp's own figures, rounded).
GGUF_BITS = {
    "IQ1_S": 1.56, "IQ2_XXS": 2.06, "IQ2_XS": 2.31, "IQ2_M": 2.7, "Q2_K": 2.63, "IQ3_XXS": 3.06, "Q3_K_S": 3.5,
    "Q3_K_M": 3.91, "Q3_K_L": 4.27, "IQ4_XS": 4.25, "Q4_0": 4.55, "Q4_K_S": 4.58, "Q4_K_M": 4.85, "MXFP4": 4.25,
    "Q5_0": 5.54, "Q5_K_S": 5.54, "Q5_K_M": 5.69, "Q6_K": 6.56, "Q8_0": 8.5, "F16": 16.0, "BF16": 16.0, "F32": 32.0,
}  # fmt: skip
# Bits per weight by quantization method: a name's 4-bit or 8-bit family decides (unknown: 8).
VLLM_QUANT_BITS = {"awq": 4.25, "gptq": 4.25, "mxfp4": 4.25, "fp4": 4.5, "int4": 4.25, "wna16": 4.25,
                   "fp8": 8.0, "int8": 8.0, "mxfp8": 8.0}  # fmt: skip
DTYPE_BITS = {"float32": 32.0, "float": 32.0}
SIZE_IN_NAME = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)[bB](?![a-zA-Z])")


@dataclass(frozen=True)
class Fit:
    fits: bool | None  # None: not enough is known to say
    reason: str
    message: str
    suggested_gpu_layers: int | None = None


def parameters_billions(spec: InferenceEngineSpec) -> float | None:
    if spec.model.parameters_billions:
        return spec.model.parameters_billions
    for text in (spec.model.source, spec.model.served_name):
        match = SIZE_IN_NAME.search(text.rsplit("/", 1)[-1])
        if match:
            return float(match.group(1))
    return None


def bits_per_weight(spec: InferenceEngineSpec) -> float:
    if spec.engine in (Family.LLAMACPP, Family.OLLAMA):
        # The quant is in the GGUF file name or Ollama tag; both default to Q4_K_M.
        name = spec.model.source.upper()
        quant = next((q for q in sorted(GGUF_BITS, key=len, reverse=True) if q in name), "Q4_K_M")
        return GGUF_BITS[quant]
    cfg = spec.vllm
    if cfg and cfg.quantization:
        return next((b for k, b in VLLM_QUANT_BITS.items() if k in cfg.quantization), 8.0)
    return DTYPE_BITS.get(cfg.dtype or "", 16.0) if cfg else 16.0


def kv_bytes_per_token(params_b: float, kv_fp8: bool) -> float:
    per_token: float = 53 * 1024 * math.pow(params_b, 0.42)
    return per_token / 2 if kv_fp8 else per_token


def context_tokens(spec: InferenceEngineSpec) -> int:
    """Tokens of KV cache the engine will hold at once."""
    return FAMILIES[spec.engine].kv_tokens(spec)


def estimated_layers(params_b: float) -> int:
    for limit, layers in ((3, 28), (10, 32), (20, 48), (40, 64), (80, 80), (200, 96)):
        if params_b <= limit:
            return layers
    return 128


def estimate(spec: InferenceEngineSpec, gpu_memory_mib: int | None) -> Fit:
    """Estimate whether the model fits on spec.gpus GPUs of `gpu_memory_mib` each."""
    if spec.engine == Family.EXTERNAL or spec.endpoints:
        return Fit(None, "NotApplicable", "the engine runs outside this cluster")
    gpus = gpu_count(spec)
    if gpus == 0:
        return Fit(None, "NoGPUs", "the engine runs on CPU; GPU memory is not checked")
    params = parameters_billions(spec)
    if params is None:
        return Fit(None, "UnknownModelSize", "set spec.model.parametersBillions to check whether the model fits")
    memory = gpu_memory_mib or spec.gpu_memory_mi_b
    if memory is None:
        return Fit(None, "UnknownGPUMemory", "no node reports nvidia.com/gpu.memory; set spec.gpuMemoryMiB")
    bits = bits_per_weight(spec)
    weights = params * 1e9 * bits / 8
    kv_fp8 = bool(spec.vllm and spec.vllm.kv_cache_dtype and spec.vllm.kv_cache_dtype.startswith("fp8"))
    tokens = context_tokens(spec)
    kv = tokens * kv_bytes_per_token(params, kv_fp8)
    total_gpu = gpus * memory * MIB
    util = 1.0
    if spec.engine == Family.VLLM:
        # vLLM claims only this share of each GPU.
        util = (spec.vllm.gpu_memory_utilization if spec.vllm else None) or 0.92
    usable = total_gpu * util
    need = weights + kv + gpus * OVERHEAD_PER_GPU
    numbers = (
        f"needs about {need / GIB:.1f} GiB (weights {weights / GIB:.1f} GiB at {bits:g} bits"
        f" for {params:g}B parameters,"
        f" KV cache {kv / GIB:.1f} GiB for {tokens} tokens, overhead {gpus * OVERHEAD_PER_GPU / GIB:.0f} GiB);"
        f" {gpus} GPU(s) x {memory} MiB give {usable / GIB:.1f} GiB"
    )
    if need <= usable:
        return Fit(True, "Fits", numbers)
    if spec.engine == Family.LLAMACPP:
        room = usable - kv - gpus * OVERHEAD_PER_GPU
        layers = estimated_layers(params)
        suggested = max(0, math.floor(layers * room / weights)) if room > 0 else 0
        return Fit(
            False,
            "PartialOffload" if suggested > 0 else "DoesNotFit",
            f"{numbers}; offload part of the model: gpuLayers about {suggested} (of an estimated {layers} layers)",
            suggested_gpu_layers=suggested,
        )
    return Fit(False, "DoesNotFit", f"{numbers}; use more GPUs, a quantized model or a shorter context")

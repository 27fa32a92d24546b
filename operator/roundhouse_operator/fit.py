"""Will the model fit on the GPUs it gets? A rough, explained estimate (the ModelFits condition). Pure.

weights = parameters x bits per weight (from the GGUF quant, vLLM quantization or dtype);
KV cache = tokens of context x bytes per token (fitted to Llama-style models: ~128 KiB/token at
8B, ~320 KiB/token at 70B, in 16-bit); overhead = 1 GiB per GPU for CUDA context and buffers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from roundhouse_api import InferenceEngineSpec
from roundhouse_api.families import FAMILIES, gpu_count

GIB = 1024**3
MIB = 1024**2
OVERHEAD_PER_GPU = 1 * GIB

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
    return FAMILIES[spec.engine].weight_bits(spec)


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
    if not FAMILIES[spec.engine].runs_workload(spec):
        return Fit(None, "NotApplicable", "the engine runs outside this cluster")
    gpus = gpu_count(spec)
    if gpus == 0:
        return Fit(None, "NoGPUs", "the engine runs on CPU; GPU memory is not checked")
    # Data-parallel copies of the model in one pod each hold all the weights on their share of the GPUs.
    copies = FAMILIES[spec.engine].model_copies(spec)
    gpus = max(1, gpus // copies)
    params = parameters_billions(spec)
    if params is None:
        return Fit(None, "UnknownModelSize", "set spec.model.parametersBillions to check whether the model fits")
    memory = gpu_memory_mib or spec.gpu_memory_mi_b
    if memory is None:
        return Fit(None, "UnknownGPUMemory", "no node reports nvidia.com/gpu.memory; set spec.gpuMemoryMiB")
    bits = bits_per_weight(spec)
    weights = params * 1e9 * bits / 8
    family = FAMILIES[spec.engine]
    kv_fp8 = family.kv_cache_fp8(spec)
    tokens = context_tokens(spec)
    kv = tokens * kv_bytes_per_token(params, kv_fp8)
    total_gpu = gpus * memory * MIB
    usable = total_gpu * family.gpu_memory_share(spec)
    need = weights + kv + gpus * OVERHEAD_PER_GPU
    numbers = (
        f"needs about {need / GIB:.1f} GiB (weights {weights / GIB:.1f} GiB at {bits:g} bits"
        f" for {params:g}B parameters,"
        f" KV cache {kv / GIB:.1f} GiB for {tokens} tokens, overhead {gpus * OVERHEAD_PER_GPU / GIB:.0f} GiB);"
        f" {gpus} GPU(s) x {memory} MiB give {usable / GIB:.1f} GiB"
        + (f", for each of {copies} data-parallel copies" if copies > 1 else "")
    )
    if need <= usable:
        return Fit(True, "Fits", numbers)
    if family.partial_offload:
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

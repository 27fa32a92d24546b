"""One module per engine family: its pinned image and version, port, health semantics, OpenAI paths,
metrics, tokenizer endpoint, the flags it renders and the flags the operator manages.

Adding a family means one module here (and its contract tests); the operator, the gateway, the CRD
generator and the tests read every family through `FAMILIES`.
"""

from __future__ import annotations

from ..engine import Family, InferenceEngineSpec
from . import external, llamacpp, ollama, sglang, vllm
from .base import (
    DEFAULT_HELPER_IMAGE,
    AdapterRoute,
    ContainerPlan,
    EngineFamily,
    gpu_count,
    repeated_managed_flags,
    served_names,
)

FAMILIES: dict[Family, EngineFamily] = {
    f.family: f for f in (vllm.FAMILY, llamacpp.FAMILY, ollama.FAMILY, sglang.FAMILY, external.FAMILY)
}


def family(name: Family) -> EngineFamily:
    """The family object for `name`."""
    return FAMILIES[name]


def adapter_routes(spec: InferenceEngineSpec) -> dict[str, AdapterRoute]:
    """spec.adapters by name, each with how a request for it reaches the engine (the gateway's view)."""
    return {r.name: r for r in FAMILIES[spec.engine].adapter_routes(spec)}


def replica_serves_adapter(spec: InferenceEngineSpec, name: str, models_body: bytes | None) -> bool:
    """Whether a ready replica serves adapter `name`: always where adapters come with the command line;
    where the operator loads them at run time, once the replica's /v1/models answer (`models_body`) lists it."""
    family = FAMILIES[spec.engine]
    if name not in adapter_routes(spec):
        return False
    if not family.runtime_adapters(spec):
        return True
    return models_body is not None and name in family.loaded_adapters(models_body)


__all__ = [
    "DEFAULT_HELPER_IMAGE",
    "FAMILIES",
    "AdapterRoute",
    "ContainerPlan",
    "EngineFamily",
    "adapter_routes",
    "family",
    "gpu_count",
    "repeated_managed_flags",
    "replica_serves_adapter",
    "served_names",
]

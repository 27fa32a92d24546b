"""Roundhouse API types: the single source of truth for the InferenceEngine and EngineMode CRDs."""

from __future__ import annotations

from typing import Any

from .autoscaling import Autoscaling, ScalingStatus, StoppingReplica
from .base import CEL_CONTEXT_KEY, CelRule, Condition, ObjectMeta, SecretKeyRef
from .engine import (
    API_VERSION,
    GROUP,
    VERSION,
    Adapter,
    AdapterStatus,
    Capability,
    EngineStatus,
    ExternalConfig,
    Family,
    InferenceEngine,
    InferenceEngineSpec,
    LlamaCppConfig,
    LocalProcess,
    ModelCache,
    ModelSource,
    OllamaConfig,
    Phase,
    Routing,
    SGLangConfig,
    Shadow,
    VLLMConfig,
)
from .mode import (
    AutoRules,
    EngineMode,
    EngineModeSpec,
    EngineModeStatus,
    Mode,
    ModePhase,
    OnDemandPolicy,
    SwitchPolicy,
    governs,
    runs,
)

__all__ = [
    "API_VERSION",
    "CEL_CONTEXT_KEY",
    "GROUP",
    "VERSION",
    "Adapter",
    "AdapterStatus",
    "AutoRules",
    "Autoscaling",
    "Capability",
    "CelRule",
    "Condition",
    "EngineMode",
    "EngineModeSpec",
    "EngineModeStatus",
    "EngineStatus",
    "ExternalConfig",
    "Family",
    "InferenceEngine",
    "InferenceEngineSpec",
    "LlamaCppConfig",
    "LocalProcess",
    "Mode",
    "ModePhase",
    "ModelCache",
    "ModelSource",
    "ObjectMeta",
    "OllamaConfig",
    "OnDemandPolicy",
    "Phase",
    "Routing",
    "SGLangConfig",
    "ScalingStatus",
    "SecretKeyRef",
    "Shadow",
    "StoppingReplica",
    "SwitchPolicy",
    "VLLMConfig",
    "governs",
    "parse_resource",
    "runs",
]


def parse_resource(doc: dict[str, Any]) -> InferenceEngine | EngineMode:
    """Validate one manifest of either kind; raises pydantic.ValidationError naming the bad field."""
    kind = doc.get("kind")
    if kind == "InferenceEngine":
        return InferenceEngine.model_validate(doc)
    if kind == "EngineMode":
        return EngineMode.model_validate(doc)
    raise ValueError(f"kind: expected InferenceEngine or EngineMode, got {kind!r}")

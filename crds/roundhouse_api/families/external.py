"""An OpenAI-compatible API outside the cluster: no workload; the gateway probes /v1/models."""

from __future__ import annotations

from typing import ClassVar

from ..base import SecretKeyRef
from ..engine import Family, InferenceEngineSpec
from .base import OPENAI_COMMON, EngineFamily


class External(EngineFamily):
    family: ClassVar[Family] = Family.EXTERNAL
    title: ClassVar[str] = "External API"
    health_path: ClassVar[str] = "/v1/models"
    gateway_probe_path: ClassVar[str] = "/v1/models"
    openai_paths: ClassVar[frozenset[str]] = OPENAI_COMMON

    def runs_workload(self, spec: InferenceEngineSpec) -> bool:
        return False

    def api_key_ref(self, spec: InferenceEngineSpec) -> SecretKeyRef | None:
        return spec.external.api_key_secret_ref if spec.external else None

    def upstream_model(self, spec: InferenceEngineSpec) -> str:
        return (spec.external.model_name if spec.external else None) or spec.model.source


FAMILY = External()

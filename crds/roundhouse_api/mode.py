"""EngineMode: which engine family runs now, for the engines it governs."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import Field

from .base import ApiModel, CelRule, Condition, ObjectMeta
from .engine import API_VERSION, Family, Phase


class Mode(StrEnum):
    VLLM = "vllm"
    OLLAMA = "ollama"
    LLAMACPP = "llamacpp"
    AUTO = "auto"


def runs(mode: Mode | None, family: Family) -> bool:
    """Whether `mode` lets engines of `family` run. No mode (or auto) runs everything; external
    APIs use no GPUs and are never switched off."""
    if mode is None or mode == Mode.AUTO or family == Family.EXTERNAL:
        return True
    return family.value == mode.value


def governs(mode: EngineMode | None, labels: dict[str, str]) -> bool:
    """Whether `mode` governs an engine with these labels (its selector's matchLabels; none: all)."""
    if mode is None:
        return True
    selector = mode.spec.selector.match_labels if mode.spec.selector else {}
    return all(labels.get(k) == v for k, v in selector.items())


class ModePhase(StrEnum):
    SWITCHING = "Switching"
    READY = "Ready"
    DEGRADED = "Degraded"


class LabelSelector(ApiModel):
    """Selects the engines an EngineMode governs (matchLabels only)."""

    match_labels: dict[str, str] = Field(default_factory=dict, description="Labels an engine must carry.")


class SwitchPolicy(ApiModel):
    """How the gateway treats requests for the incoming family while a switch is under way."""

    during_switch: Literal["hold", "fallback", "reject"] = Field(
        default="hold",
        description="hold: wait for the incoming family (bounded); fallback: use the engines' fallback chain;"
        " reject: 503 with Retry-After.",
    )
    max_hold_seconds: int = Field(default=60, ge=0, le=1800, description="How long a held request may wait.")
    drain_seconds: int = Field(
        default=30,
        ge=0,
        le=3600,
        description="Grace for in-flight requests before the outgoing family stops.",
    )


class AutoRules(ApiModel):
    """Per-request rules applied in `auto` mode (and among candidates of one family)."""

    capabilities: bool = Field(default=True, description="Tools or json_schema go to engines that declare them.")
    context_length: bool = Field(default=True, description="Long prompts go to engines with enough context.")
    task_families: dict[str, Family] = Field(
        default_factory=dict, description="Task type (X-Roundhouse-Task) to its preferred family."
    )
    concurrency_overflow: bool = Field(default=True, description="An engine at maxConcurrency yields to the next.")
    queue_timeout_seconds: float = Field(
        default=5, ge=0, le=600, description="How long a request waits when every candidate is at its cap."
    )


class EngineModeSpec(ApiModel):
    """Desired engine family."""

    mode: Mode = Field(description="vllm, ollama, llamacpp or auto (every governed engine that fits).")
    selector: LabelSelector | None = Field(
        default=None, description="Engines governed; default every engine in the namespace."
    )
    switch_policy: SwitchPolicy | None = Field(default=None, description="Request handling during a switch.")
    auto_rules: AutoRules | None = Field(default=None, description="Routing rules for auto mode.")

    cel_rules: ClassVar[list[CelRule]] = []


class GovernedEngine(ApiModel):
    """One governed engine as the last reconcile saw it."""

    name: str = Field(description="InferenceEngine name.")
    family: Family = Field(description="Its engine family.")
    active: bool = Field(description="Whether the mode lets it run.")
    phase: Phase | None = Field(default=None, description="Its phase.")
    message: str | None = Field(default=None, description="Why, when it is not where the mode wants it.")


class EngineModeStatus(ApiModel):
    """Observed state of the switch."""

    phase: ModePhase | None = Field(default=None, description="Switching, Ready or Degraded.")
    active_mode: Mode | None = Field(default=None, description="The mode in force.")
    previous_mode: Mode | None = Field(default=None, description="The mode before the last switch.")
    switch_started_at: datetime | None = Field(default=None, description="When the last switch began.")
    switch_completed_at: datetime | None = Field(default=None, description="When the last switch finished.")
    last_switch_seconds: float | None = Field(default=None, ge=0, description="Duration of the last switch.")
    engines: list[GovernedEngine] = Field(default_factory=list, description="Per-engine state.")
    observed_generation: int | None = Field(default=None, ge=0, description="Last generation acted on.")
    message: str | None = Field(default=None, description="Why the mode is in this phase.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready and Switching conditions.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class EngineMode(ApiModel):
    """An EngineMode resource as stored by the API server."""

    api_version: Literal["roundhouse.dev/v1alpha1"] = Field(default=API_VERSION, alias="apiVersion")
    kind: Literal["EngineMode"] = "EngineMode"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: EngineModeSpec
    status: EngineModeStatus | None = None

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
    SGLANG = "sglang"
    AUTO = "auto"
    ON_DEMAND = "onDemand"


def runs(mode: Mode | None, family: Family) -> bool:
    """Whether `mode` lets engines of `family` run. No mode (or auto) runs everything; onDemand lets
    every family run and the on-demand planner decides which engines hold the GPUs; external APIs use
    no GPUs and are never switched off."""
    if mode is None or mode in (Mode.AUTO, Mode.ON_DEMAND) or family == Family.EXTERNAL:
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
        description="Grace for in-flight requests before the outgoing family stops; it ends sooner once every"
        " gateway reports none left on it.",
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
    prefix_affinity: bool | None = Field(
        default=None,
        description="Send a prompt prefix (system prompt, earlier turns) back to the replica that cached it:"
        " consistent hashing with bounded load. Default: on for families whose engines cache prompts.",
    )
    prefix_affinity_epsilon: float = Field(
        default=0.25, ge=0.01, le=10,
        description="Bounded load: a replica above (1 + epsilon) x the average outstanding is skipped.",
    )  # fmt: skip
    engine_load: bool = Field(
        default=True,
        description="Count the queue each engine reports in its metrics (fresh ones only) with its outstanding"
        " requests.",
    )
    balancing: Literal["leastOutstanding", "roundRobin"] = Field(
        default="leastOutstanding", description="How requests spread over equal replicas."
    )


class OnDemandPolicy(ApiModel):
    """How engines are started by the requests that need them (mode onDemand), within a GPU budget."""

    gpu_budget: int | None = Field(
        default=None, ge=0, le=4096,
        description="GPUs the governed engines may hold at once; default all GPUs of the nodes they can use.",
    )  # fmt: skip
    min_active_seconds: int = Field(
        default=60, ge=0, le=86400, description="An engine started on demand runs at least this long (no thrashing)."
    )
    idle_seconds: int = Field(
        default=0, ge=0, le=604800, description="An engine with no request for this long is scaled to zero; 0: never."
    )
    drain_seconds: int = Field(
        default=30, ge=0, le=3600,
        description="How long requests running on an engine being stopped may finish (it gets no new ones).",
    )  # fmt: skip
    max_wait_seconds: int = Field(
        default=300, ge=1, le=3600, description="How long a request may wait for its engine to start."
    )

    cel_rules: ClassVar[list[CelRule]] = [
        CelRule(
            "!has(self.idleSeconds) || self.idleSeconds == 0 || !has(self.minActiveSeconds) ||"
            " self.idleSeconds >= self.minActiveSeconds",
            "spec.onDemand.idleSeconds must be 0 (never) or at least spec.onDemand.minActiveSeconds",
            ".idleSeconds",
        ),
    ]


class EngineModeSpec(ApiModel):
    """Desired engine family."""

    mode: Mode = Field(
        description="vllm, ollama, llamacpp, sglang, auto (every governed engine that fits) or onDemand (engines start"
        " when requests need them, within spec.onDemand.gpuBudget)."
    )
    selector: LabelSelector | None = Field(
        default=None, description="Engines governed; default every engine in the namespace."
    )
    switch_policy: SwitchPolicy | None = Field(default=None, description="Request handling during a switch.")
    auto_rules: AutoRules | None = Field(default=None, description="Routing rules for auto mode.")
    on_demand: OnDemandPolicy | None = Field(default=None, description="Budget and timings of mode onDemand.")

    cel_rules: ClassVar[list[CelRule]] = [
        CelRule(
            "!has(self.onDemand) || self.mode == 'onDemand'",
            "spec.onDemand applies only to spec.mode onDemand",
            ".onDemand",
        ),
    ]


class GovernedEngine(ApiModel):
    """One governed engine as the last reconcile saw it."""

    name: str = Field(description="InferenceEngine name.")
    family: Family = Field(description="Its engine family.")
    active: bool = Field(description="Whether the mode lets it run.")
    phase: Phase | None = Field(default=None, description="Its phase.")
    message: str | None = Field(default=None, description="Why, when it is not where the mode wants it.")
    state: Literal["active", "standby", "waiting", "starting", "draining", "stopping"] | None = Field(
        default=None, description="onDemand: where the engine is in its activation."
    )
    demanded_at: datetime | None = Field(default=None, description="onDemand: the oldest request waiting for it.")
    activated_at: datetime | None = Field(default=None, description="onDemand: when it was last started.")
    draining_since: datetime | None = Field(default=None, description="onDemand: when its drain began.")
    last_request_at: datetime | None = Field(default=None, description="onDemand: its latest request, as reported.")


class EngineModeStatus(ApiModel):
    """Observed state of the switch."""

    phase: ModePhase | None = Field(default=None, description="Switching, Ready or Degraded.")
    active_mode: Mode | None = Field(default=None, description="The mode in force.")
    previous_mode: Mode | None = Field(default=None, description="The mode before the last switch.")
    switch_started_at: datetime | None = Field(default=None, description="When the last switch began.")
    switch_completed_at: datetime | None = Field(default=None, description="When the last switch finished.")
    last_switch_seconds: float | None = Field(default=None, ge=0, description="Duration of the last switch.")
    engines: list[GovernedEngine] = Field(default_factory=list, description="Per-engine state.")
    gpu_budget: int | None = Field(default=None, ge=0, description="onDemand: the GPU budget in force.")
    gpus_held: int | None = Field(default=None, ge=0, description="onDemand: GPUs the governed engines hold now.")
    activations: int | None = Field(default=None, ge=0, description="onDemand: engines started on demand so far.")
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

"""spec.autoscaling on an InferenceEngine: replicas follow the load, and what the operator reports back."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from pydantic import Field

from .base import ApiModel, CelRule


class Autoscaling(ApiModel):
    """Replicas follow the requests running and waiting; without it replicas stay as spec.replicas says."""

    min_replicas: int = Field(
        default=1, ge=0, le=1000,
        description="Fewest replicas. 0: in mode onDemand the engine is stopped after idleSeconds without a request"
        " (requests wait for it to start); in other modes at least one replica runs.",
    )  # fmt: skip
    max_replicas: int = Field(ge=1, le=1000, description="Most replicas (in mode onDemand, within gpuBudget).")
    target_requests_per_replica: int = Field(
        default=4, ge=1, le=100000,
        description="Requests running plus waiting per replica the engine is sized for (the gateways count them).",
    )  # fmt: skip
    scale_up_seconds: int = Field(
        default=10, ge=0, le=3600,
        description="Stabilization: a scale-up goes only as far as the load asked for during all of this window.",
    )  # fmt: skip
    scale_down_seconds: int = Field(
        default=120, ge=0, le=86400,
        description="Stabilization: a scale-down goes only as far as the load allowed during all of this window.",
    )  # fmt: skip

    cel_rules: ClassVar[list[CelRule]] = [
        CelRule(
            "!has(self.minReplicas) || self.minReplicas <= self.maxReplicas",
            "spec.autoscaling.minReplicas must be at most spec.autoscaling.maxReplicas",
            ".minReplicas",
        ),
    ]


class ScalingStatus(ApiModel):
    """What the autoscaler wants for this engine, what it got, and why."""

    wanted_replicas: int = Field(ge=0, description="Replicas the load asks for (within min and max).")
    desired_replicas: int = Field(ge=0, description="Replicas the operator set: the wanted ones, within the budget.")
    load: float = Field(default=0, ge=0, description="Requests running plus waiting, as the gateways last reported.")
    reason: str = Field(default="", max_length=1024, description="Why this many, in words.")
    last_scale_time: datetime | None = Field(default=None, description="When desiredReplicas last changed.")


class StoppingReplica(ApiModel):
    """A replica a scale-down stops: out of every gateway's routing, finishing the requests it runs."""

    pod: str = Field(description="The replica's pod (the ReplicaSet deletes it first: pod-deletion-cost).")
    address: str = Field(default="", description="The pod's IP: the gateways route to it no more.")
    since: datetime = Field(description="When it was taken out of routing.")

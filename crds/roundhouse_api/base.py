"""Shared base for the API models: camelCase field names and CEL rules run by pydantic.

The same CEL expressions are emitted as `x-kubernetes-validations` in the generated CRDs,
so `kubectl apply`, the operator and the unit tests all apply one set of rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any, ClassVar, Literal

import celpy
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator
from pydantic.alias_generators import to_camel


@dataclass(frozen=True)
class CelRule:
    """One `x-kubernetes-validations` entry: a CEL rule over `self` and the message shown when it fails."""

    rule: str
    message: str
    field_path: str | None = None

    def to_schema(self) -> dict[str, str]:
        """The rule as the CRD schema spells it."""
        out = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        return out

    @cached_property
    def program(self) -> celpy.Runner:
        env = celpy.Environment()
        return env.program(env.compile(self.rule))

    def holds(self, obj: dict[str, Any]) -> bool:
        """Evaluate the rule against `obj` (the object as the API server would see it)."""
        try:
            return bool(self.program.evaluate({"self": json_to_cel(obj)}))
        except CELEvalError as err:
            # The API server reports a rule that cannot be evaluated as a failure too.
            raise ValueError(f"{self.message} (rule {self.rule!r} failed to evaluate: {err.args[0]})") from None


# model_validate(..., context={CEL_CONTEXT_KEY: False}) skips the CEL rules: for objects read back from
# the API server, which enforced the same rules (from the generated CRD) when they were written.
CEL_CONTEXT_KEY = "cel"


def _add_cel_rules(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    rules: list[CelRule] = getattr(cls, "cel_rules", [])
    if rules:
        schema["x-kubernetes-validations"] = [r.to_schema() for r in rules]


class ApiModel(BaseModel):
    """Base for every API type: camelCase on the wire, unknown fields refused, CEL rules enforced."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        json_schema_extra=_add_cel_rules,
    )

    cel_rules: ClassVar[list[CelRule]] = []

    def wire(self) -> dict[str, Any]:
        """The object as it is stored in Kubernetes: camelCase keys, absent fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")

    @model_validator(mode="after")
    def _check_cel_rules(self, info: ValidationInfo) -> ApiModel:
        rules = type(self).cel_rules
        if rules and (info.context or {}).get(CEL_CONTEXT_KEY, True):
            obj = self.wire()
            failed = [r.message for r in rules if not r.holds(obj)]
            if failed:
                raise ValueError("; ".join(failed))
        return self


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """A Kubernetes-style condition (metav1.Condition)."""

    type: str = Field(description="Type of condition in CamelCase, e.g. Ready.", max_length=316)
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(description="One-word CamelCase reason for the last transition.", max_length=1024)
    message: str = Field(default="", description="Human-readable details.", max_length=32768)
    last_transition_time: datetime = Field(description="When the status last changed.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation this condition was computed from."
    )


class SecretKeyRef(ApiModel):
    """A key in a Secret in the resource's own namespace."""

    name: str = Field(description="Name of the Secret.", min_length=1, max_length=253)
    key: str = Field(description="Key within the Secret.", min_length=1, max_length=253)


class ObjectMeta(BaseModel):
    """The part of metadata the operator and gateway read; everything else is kept as is."""

    model_config = ConfigDict(extra="allow")

    name: str = ""
    namespace: str = "default"
    generation: int = 0
    uid: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

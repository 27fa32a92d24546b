"""`GET /v1/models` and `GET /v1/models/{id}` in OpenAI's shape, with where each model runs. Pure."""

from __future__ import annotations

from typing import Any

from roundhouse_gateway.engines.catalog import Catalog


def _engines(catalog: Catalog, model: str) -> list[dict[str, Any]]:
    return [{"name": e.name, "family": e.family.value, "phase": e.phase, "ready": e.ready}
            for e in catalog.engines if model in e.served and catalog.mode.active(e)]  # fmt: skip


def model_object(catalog: Catalog, model: str) -> dict[str, Any] | None:
    """The model as OpenAI describes one, plus its engines (a standby one says so in its phase);
    None when no engine the mode lets run serves it."""
    engines = _engines(catalog, model)
    if not engines:
        return None
    out: dict[str, Any] = {"id": model, "object": "model", "created": 0, "owned_by": "roundhouse",
                           "roundhouse": {"engines": engines}}  # fmt: skip
    # A LoRA adapter names its base model, as vLLM's own /v1/models does.
    parent = next((e.base for e in catalog.engines if model in e.adapter and catalog.mode.active(e)), None)
    if parent:
        out["parent"] = parent
    return out


def model_list(catalog: Catalog) -> dict[str, Any]:
    return {"object": "list", "data": [m for name in catalog.models() if (m := model_object(catalog, name))]}


def not_found(model: str) -> str:
    """OpenAI's own words for a model that is not there."""
    return f"The model `{model}` does not exist or you do not have access to it."

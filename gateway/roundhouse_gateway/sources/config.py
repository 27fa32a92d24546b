"""Standalone mode: engines and the mode from a YAML file of InferenceEngine/EngineMode documents."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from roundhouse_api import EngineMode, InferenceEngine, Mode, governs, parse_resource
from roundhouse_api.families import FAMILIES
from roundhouse_gateway.engines.catalog import Catalog, engine_from_resource, mode_from_resource


class ConfigError(ValueError):
    """The config file cannot be used; the message names the document and field."""


@dataclasses.dataclass(frozen=True)
class Config:
    catalog: Catalog
    mode: EngineMode | None
    local: list[InferenceEngine]  # mode onDemand: engines this gateway runs as processes


def load_catalog(path: Path) -> Catalog:
    """Every engine of the file (each must give spec.endpoints or be external) and its EngineMode."""
    return load_config(path).catalog


def load_config(path: Path) -> Config:
    """The file's engines and EngineMode. Each engine gives spec.endpoints, is external, or (with mode
    onDemand) is run by the gateway itself from its family's command line or spec.process."""
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: {err}") from None
    engines: list[InferenceEngine] = []
    modes: list[EngineMode] = []
    for i, doc in enumerate(docs):
        where = f"{path} document {i + 1} ({(doc.get('metadata') or {}).get('name', '?')})"
        try:
            res = parse_resource(doc)
        except (ValidationError, ValueError) as err:
            raise ConfigError(f"{where}: {err}") from None
        if isinstance(res, EngineMode):
            modes.append(res)
            continue
        engines.append(res)
    if len(modes) > 1:
        raise ConfigError(f"{path}: at most one EngineMode, found {len(modes)}")
    governing = modes[0] if modes else None
    on_demand = governing is not None and governing.spec.mode == Mode.ON_DEMAND
    local = [ie for ie in engines if ie.spec.engine.value != "external" and not ie.spec.endpoints]
    for ie in local:
        if not on_demand or not governs(governing, ie.metadata.labels):
            raise ConfigError(f"{path} ({ie.metadata.name}): spec.endpoints is required when the gateway runs without"
                              " Kubernetes, unless an EngineMode with mode onDemand governs the engine (the gateway"
                              " then runs it)")  # fmt: skip
    built = tuple(
        engine_from_resource(ie, api_key=_api_key(ie), governed=governs(governing, ie.metadata.labels))
        for ie in engines
    )
    mode = mode_from_resource(modes[0] if modes else None)
    # Standalone, the file's mode is in force from the start: nothing to wait for.
    catalog = Catalog(built, dataclasses.replace(mode, phase="Ready", switching=False, source=str(path)))
    return Config(catalog, governing, local)


def _api_key(ie: InferenceEngine) -> str | None:
    """The engine's API key, standalone: from the environment variable named like the Secret key."""
    ref = FAMILIES[ie.spec.engine].api_key_ref(ie.spec)
    return os.environ.get(ref.key) if ref else None

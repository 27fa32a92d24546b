"""The command lines the contract tier runs: every golden manifest, and one engine per value of every
enum (and both values of every switch) in each family's section of the CRD. Pure: no I/O but reading
the goldens."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from roundhouse_api import InferenceEngine, LlamaCppConfig, OllamaConfig, SGLangConfig, VLLMConfig
from roundhouse_operator.render import render
from tests.support.manifests import roundhouse_examples

GOLDEN = Path(__file__).resolve().parents[1] / "unit" / "golden"


@dataclass(frozen=True)
class Case:
    """One rendered engine: what the test runs and what it expects the engine to say."""

    id: str
    engine: InferenceEngine
    container: dict[str, Any]  # the engine container exactly as rendered (or as the golden holds it)
    pod: dict[str, Any]

    @property
    def family(self) -> str:
        return self.engine.spec.engine.value


def _annotation_values(annotation: Any) -> list[Any]:
    """The values worth trying for a field: each Literal choice, both booleans."""
    out: list[Any] = []
    for arg in typing.get_args(annotation) or (annotation,):
        if typing.get_origin(arg) is typing.Literal:
            out += list(typing.get_args(arg))
        elif arg is bool:
            out += [True, False]
    return out


def enum_values(model: type[BaseModel]) -> dict[str, list[Any]]:
    """Every enum-like field of an API section (by its wire name) with the values to try."""
    fields: dict[str, list[Any]] = {}
    for name, info in model.model_fields.items():
        values = _annotation_values(info.annotation)
        if values:
            fields[info.alias or name] = values
    return fields


def engine(name: str, spec: dict[str, Any]) -> InferenceEngine:
    doc = {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine",
           "metadata": {"name": name, "namespace": "contract", "uid": "contract-uid"}, "spec": spec}  # fmt: skip
    return InferenceEngine.model_validate(doc)


def from_engine(case_id: str, ie: InferenceEngine) -> Case:
    deployment = next(o for o in render(ie, 1) if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    return Case(case_id, ie, pod["containers"][0], pod)


BASES: dict[str, dict[str, Any]] = {
    "llamacpp": {"engine": "llamacpp", "model": {"source": "/models/tiny.gguf", "servedName": "tiny-chat",
                                                 "aliases": ["tiny"]}},
    "vllm": {"engine": "vllm", "model": {"source": "org/tiny", "servedName": "tiny-chat"}},
    "ollama": {"engine": "ollama", "model": {"source": "tiny:latest", "servedName": "tiny-chat"}},
    "sglang": {"engine": "sglang", "model": {"source": "org/tiny", "servedName": "tiny-chat"}},
}  # fmt: skip
SECTIONS: dict[str, type[BaseModel]] = {"llamacpp": LlamaCppConfig, "vllm": VLLMConfig, "ollama": OllamaConfig,
                                        "sglang": SGLangConfig}  # fmt: skip
# Values that need a partner field to be valid (the CRD's CEL rules say so).
PARTNERS: dict[tuple[str, str], dict[str, Any]] = {
    ("vllm", "enableAutoToolChoice"): {"toolCallParser": "hermes"},
}
SKIP = {("llamacpp", "metrics")}  # --metrics is on in every other case


def enum_cases(family: str) -> list[Case]:
    """One engine per value of every enum (and both booleans) of the family's section."""
    cases = []
    for field, values in enum_values(SECTIONS[family]).items():
        if (family, field) in SKIP:
            continue
        for value in values:
            section = {field: value, **(PARTNERS.get((family, field), {}) if value else {})}
            spec = {**BASES[family], family: section}
            cases.append(from_engine(f"{family}-{field}-{value}", engine(f"enum-{family}", spec)))
    if family == "llamacpp":
        for layers in ("auto", "all", 0, 99):
            spec = {**BASES[family], "llamacpp": {"gpuLayers": layers}}
            cases.append(from_engine(f"llamacpp-gpuLayers-{layers}", engine("enum-llamacpp", spec)))
        spec = {**BASES[family], "gpus": 2, "llamacpp": {"tensorSplit": [3, 1], "splitMode": "layer"}}
        cases.append(from_engine("llamacpp-tensorSplit", engine("enum-llamacpp", spec)))
        spec = {**BASES[family], "llamacpp": {"mlock": True, "noMmap": True}}
        cases.append(from_engine("llamacpp-mlock-noMmap", engine("enum-llamacpp", spec)))
        every = {"contextSize": 4096, "threads": 2, "parallel": 2, "batchSize": 256, "ropeFreqBase": 10000,
                 "ropeFreqScale": 0.5, "port": 9090, "extraArgs": ["--threads-batch", "2"]}  # fmt: skip
        cases.append(
            from_engine("llamacpp-every-number", engine("enum-llamacpp", {**BASES[family], "llamacpp": every}))
        )
    if family == "vllm":
        every = {"gpuMemoryUtilization": 0.8, "maxModelLen": 4096, "maxNumSeqs": 16, "maxNumBatchedTokens": 8192,
                 "enableChunkedPrefill": False, "dtype": "bfloat16", "extraArgs": ["--enforce-eager"]}  # fmt: skip
        base = {**BASES[family], "model": {**BASES[family]["model"], "revision": "main", "aliases": ["t"]},
                "gpus": 2, "vllm": {**every, "tensorParallelSize": 2}}  # fmt: skip
        cases.append(from_engine("vllm-every-number", engine("enum-vllm", base)))
    if family == "sglang":
        every = {"contextLength": 4096, "memFractionStatic": 0.8, "maxRunningRequests": 16, "chunkedPrefillSize": -1,
                 "apiKeySecretRef": {"name": "k", "key": "apiKey"}, "extraArgs": ["--trust-remote-code"]}  # fmt: skip
        sizes = {"tensorParallelSize": 2, "dataParallelSize": 2, "pipelineParallelSize": 2}
        base = {**BASES[family], "model": {**BASES[family]["model"], "revision": "main"}, "gpus": 8,
                "sglang": {**every, **sizes}}  # fmt: skip
        cases.append(from_engine("sglang-every-number", engine("enum-sglang", base)))
    if family == "ollama":
        spec = {**BASES[family], "ollama": {"numParallel": 2, "keepAlive": "-1", "maxLoadedModels": 1, "maxQueue": 8}}
        cases.append(from_engine("ollama-every-setting", engine("enum-ollama", spec)))
    return cases


def golden_cases(family: str) -> list[Case]:
    """The engine container of every golden manifest of the family, exactly as the golden holds it."""
    cases = []
    for path in sorted(GOLDEN.glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        deployment = next((d for d in docs if d["kind"] == "Deployment"), None)
        if deployment is None or deployment["metadata"]["labels"]["roundhouse.dev/family"] != family:
            continue
        doc = next(d for d in roundhouse_examples() if d["metadata"]["name"] == deployment["metadata"]["name"])
        ie = InferenceEngine.model_validate({**doc, "metadata": {**doc["metadata"], "namespace": "models"}})
        pod = deployment["spec"]["template"]["spec"]
        cases.append(Case(f"golden-{path.stem}", ie, pod["containers"][0], pod))
    return cases


def all_cases(family: str) -> list[Case]:
    return [*golden_cases(family), *enum_cases(family)]

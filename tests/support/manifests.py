"""Example manifests and a catalogue of invalid ones, shared by the unit and integration tiers.

Each invalid case must be refused both by the pydantic models and by `kubectl apply` against the
real API server, with an error naming the field.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "manifests" / "examples"


def example_docs() -> dict[str, list[dict[str, Any]]]:
    """Every document of every example file, keyed by file name."""
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in sorted(EXAMPLES.glob("*.yaml"))}


def roundhouse_examples() -> list[dict[str, Any]]:
    """The Roundhouse resources (not Secrets) among the examples."""
    return [d for docs in example_docs().values() for d in docs if d["apiVersion"].startswith("roundhouse.dev/")]


def _example(name: str) -> dict[str, Any]:
    for doc in roundhouse_examples():
        if doc["metadata"]["name"] == name:
            return copy.deepcopy(doc)
    raise KeyError(name)


def _vllm() -> dict[str, Any]:
    return _example("qwen2-5-7b")


def _llama() -> dict[str, Any]:
    return _example("gemma-3-12b")


def _ollama() -> dict[str, Any]:
    return _example("llama3-1-8b-ollama")


def _external() -> dict[str, Any]:
    return _example("qwen-external")


def _mode() -> dict[str, Any]:
    return _example("default")


@dataclass(frozen=True)
class Invalid:
    """A manifest that must be refused, and the field its error must name."""

    id: str
    build: Callable[[], dict[str, Any]]
    field: str

    name: str | None = None  # the object's own name, when the name is what is wrong

    def manifest(self, name: str | None = None) -> dict[str, Any]:
        doc = self.build()
        doc["metadata"]["name"] = name or self.name or f"bad-{self.id}"
        return doc


def _with(base: Callable[[], dict[str, Any]], change: Callable[[dict[str, Any]], None]) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        doc = base()
        change(doc)
        return doc

    return build


INVALID: list[Invalid] = [
    Invalid(
        "section-of-other-family",
        _with(_vllm, lambda d: d["spec"].update(llamacpp={"threads": 4})),
        "spec.llamacpp",
    ),
    Invalid(
        "autoscaling-min-above-max",
        _with(_llama, lambda d: d["spec"].update(autoscaling={"minReplicas": 3, "maxReplicas": 2})),
        "spec.autoscaling.minReplicas",
    ),
    Invalid(
        "autoscaling-external",
        _with(_external, lambda d: d["spec"].update(autoscaling={"maxReplicas": 2})),
        "spec.autoscaling",
    ),
    Invalid(
        "autoscaling-max-zero",
        _with(_llama, lambda d: d["spec"].update(autoscaling={"maxReplicas": 0})),
        "maxReplicas",
    ),
    Invalid("tp-times-pp-not-gpus", _with(_vllm, lambda d: d["spec"].update(gpus=2)), "spec.gpus"),
    Invalid(
        "llamacpp-not-gguf",
        _with(_llama, lambda d: d["spec"]["model"].update(source="google/gemma-3-12b-it")),
        "spec.model.source",
    ),
    Invalid(
        "split-gguf-not-first-shard",
        _with(_llama, lambda d: d["spec"]["model"].update(source="/models/gpt-oss-120b-00002-of-00003.gguf")),
        "spec.model.source",
    ),
    Invalid("external-without-baseurl", _with(_external, lambda d: d["spec"].pop("external")), "spec.external"),
    Invalid("external-with-gpus", _with(_external, lambda d: d["spec"].update(gpus=1)), "spec.gpus"),
    Invalid(
        "external-with-endpoints",
        _with(_external, lambda d: d["spec"].update(endpoints=["http://10.0.0.5:8000"])),
        "spec.endpoints",
    ),
    Invalid(
        "external-baseurl-not-url",
        _with(_external, lambda d: d["spec"]["external"].update(baseURL="api.example.com/v1")),
        "spec.external.baseURL",
    ),
    Invalid(
        "gpu-util-above-one",
        _with(_vllm, lambda d: d["spec"]["vllm"].update(gpuMemoryUtilization=1.5)),
        "spec.vllm.gpuMemoryUtilization",
    ),
    Invalid(
        "gpu-util-zero",
        _with(_vllm, lambda d: d["spec"]["vllm"].update(gpuMemoryUtilization=0)),
        "spec.vllm.gpuMemoryUtilization",
    ),
    Invalid("negative-replicas", _with(_vllm, lambda d: d["spec"].update(replicas=-1)), "spec.replicas"),
    Invalid("unknown-engine", _with(_vllm, lambda d: d["spec"].update(engine="tgi")), "spec.engine"),
    Invalid("unknown-mode", _with(_mode, lambda d: d["spec"].update(mode="tgi")), "spec.mode"),
    Invalid(
        "tool-choice-without-parser",
        _with(_vllm, lambda d: d["spec"]["vllm"].pop("toolCallParser")),
        "spec.vllm.toolCallParser",
    ),
    Invalid(
        "tensor-split-not-per-gpu",
        _with(_llama, lambda d: d["spec"]["llamacpp"].update(tensorSplit=[1, 1, 1])),
        "spec.llamacpp.tensorSplit",
    ),
    Invalid(
        "gpu-layers-word",
        _with(_llama, lambda d: d["spec"]["llamacpp"].update(gpuLayers="most")),
        "spec.llamacpp.gpuLayers",
    ),
    Invalid(
        "flash-attention-yes",
        _with(_llama, lambda d: d["spec"]["llamacpp"].update(flashAttention="yes")),
        "spec.llamacpp.flashAttention",
    ),
    Invalid(
        "missing-served-name",
        _with(_vllm, lambda d: d["spec"]["model"].pop("servedName")),
        "spec.model.servedName",
    ),
    Invalid(
        "cache-size-and-claim",
        _with(_llama, lambda d: d["spec"]["cache"].update(existingClaim="models")),
        "spec.cache",
    ),
    Invalid("unknown-field", _with(_vllm, lambda d: d["spec"].update(replica=2)), "spec.replica"),
    # Values the pinned engines refuse at start-up (found by the contract tier): refused at apply instead.
    Invalid(
        "vllm-quantization-marlin",
        _with(_vllm, lambda d: d["spec"]["vllm"].update(quantization="marlin")),
        "spec.vllm.quantization",
    ),
    Invalid(
        "vllm-no-chunked-prefill-short-batch",
        _with(
            _vllm,
            lambda d: d["spec"]["vllm"].update(enableChunkedPrefill=False, maxNumBatchedTokens=512, maxModelLen=4096),
        ),
        "spec.vllm.maxNumBatchedTokens",
    ),
    Invalid(
        "vllm-batch-below-num-seqs",
        _with(_vllm, lambda d: d["spec"]["vllm"].update(maxNumBatchedTokens=16, maxNumSeqs=32)),
        "spec.vllm.maxNumBatchedTokens",
    ),
    Invalid(
        "vllm-extra-args-repeat-port",
        _with(_vllm, lambda d: d["spec"]["vllm"].update(extraArgs=["--port=9000"])),
        "spec.vllm.extraArgs",
    ),
    Invalid(
        "llamacpp-extra-args-repeat-alias",
        _with(_llama, lambda d: d["spec"]["llamacpp"].update(extraArgs=["--alias", "other"])),
        "spec.llamacpp.extraArgs",
    ),
    Invalid(
        "llamacpp-load-mode-and-mlock",
        _with(_llama, lambda d: d["spec"]["llamacpp"].update(loadMode="mmap", mlock=True)),
        "spec.llamacpp.loadMode",
    ),
    Invalid(
        "llamacpp-split-mode-tensor",
        _with(_llama, lambda d: d["spec"]["llamacpp"].update(splitMode="tensor")),
        "spec.llamacpp.splitMode",
    ),
    Invalid(
        "cache-size-not-a-quantity",
        _with(_llama, lambda d: d["spec"]["cache"].update(size="lots")),
        "spec.cache.size",
    ),
    # Names and strings that cannot work where they end up (Service names, labels, helpers' arguments).
    Invalid("name-too-long-for-a-label", _vllm, "metadata.name", name="e" * 64),
    Invalid("name-with-a-dot", _vllm, "metadata.name", name="qwen2.5"),
    Invalid("name-starting-with-a-digit", _vllm, "metadata.name", name="7b-engine"),
    Invalid(
        "ollama-tag-command-substitution",
        _with(_ollama, lambda d: d["spec"]["model"].update(source="x$(id)")),
        "spec.model.source",
    ),
    Invalid(
        "ollama-tag-quote",
        _with(_ollama, lambda d: d["spec"]["model"].update(source='llama3"; rm -rf /')),
        "spec.model.source",
    ),
    Invalid(
        "ollama-tag-not-a-name",
        _with(_ollama, lambda d: d["spec"]["model"].update(source="-x:latest")),
        "spec.model.source",
    ),
    Invalid(
        "gguf-url-backtick",
        _with(_llama, lambda d: d["spec"]["model"].update(source="https://h/`id`.gguf")),
        "spec.model.source",
    ),
    Invalid(
        "vllm-source-semicolon",
        _with(_vllm, lambda d: d["spec"]["model"].update(source="org/m;reboot")),
        "spec.model.source",
    ),
    Invalid("image-upper-case", _with(_vllm, lambda d: d["spec"].update(image="Vllm/Vllm-OpenAI:v1")), "spec.image"),
    Invalid("image-two-tags", _with(_vllm, lambda d: d["spec"].update(image="vllm/vllm:a:b")), "spec.image"),
    Invalid("image-with-space", _with(_vllm, lambda d: d["spec"].update(image="vllm/vllm openai")), "spec.image"),
    Invalid(
        "mode-hold-too-long",
        _with(_mode, lambda d: d["spec"]["switchPolicy"].update(maxHoldSeconds=100000)),
        "spec.switchPolicy.maxHoldSeconds",
    ),
    Invalid(
        "process-with-endpoints",
        _with(_vllm, lambda d: d["spec"].update(process={"command": ["vllm"]}, endpoints=["http://10.0.0.5:8000"])),
        "spec.process",
    ),
    Invalid(
        "process-empty-command",
        _with(_vllm, lambda d: d["spec"].update(process={"command": []})),
        "spec.process.command",
    ),
    Invalid(
        "on-demand-policy-with-another-mode",
        _with(_mode, lambda d: d["spec"].update(onDemand={"gpuBudget": 8})),
        "spec.onDemand",
    ),
    Invalid(
        "on-demand-idle-below-min-active",
        _with(
            _mode, lambda d: d["spec"].update(mode="onDemand", onDemand={"minActiveSeconds": 120, "idleSeconds": 60})
        ),
        "spec.onDemand.idleSeconds",
    ),
    Invalid(
        "on-demand-negative-budget",
        _with(_mode, lambda d: d["spec"].update(mode="onDemand", onDemand={"gpuBudget": -1})),
        "spec.onDemand.gpuBudget",
    ),
    # LoRA adapters (spec.adapters).
    Invalid(
        "adapter-names-repeat",
        _with(
            _vllm, lambda d: d["spec"].update(adapters=[{"name": "a", "source": "o/a"}, {"name": "a", "source": "o/b"}])
        ),
        "spec.adapters",
    ),
    # Named like the model's alias `qwen` (not its servedName) and like its servedName: each refused by
    # the rule on names (the field with "[].name": not another spec.adapters rule).
    Invalid(
        "adapter-named-like-an-alias",
        _with(_vllm, lambda d: d["spec"].update(adapters=[{"name": "qwen", "source": "o/a"}])),
        "spec.adapters[].name",
    ),
    Invalid(
        "adapter-named-like-the-served-name",
        _with(_vllm, lambda d: d["spec"].update(adapters=[{"name": "qwen2.5-7b-instruct", "source": "o/a"}])),
        "spec.adapters[].name",
    ),
    Invalid(
        "adapter-on-ollama",
        _with(_ollama, lambda d: d["spec"].update(adapters=[{"name": "a", "source": "o/a"}])),
        "spec.adapters",
    ),
    Invalid(
        "adapter-on-external",
        _with(_external, lambda d: d["spec"].update(adapters=[{"name": "a", "source": "o/a"}])),
        "spec.adapters",
    ),
    Invalid(
        "llamacpp-adapter-not-gguf",
        _with(_llama, lambda d: d["spec"].update(adapters=[{"name": "a", "source": "org/lora"}])),
        "spec.adapters",
    ),
    Invalid(
        "llamacpp-adapter-path-with-colon",
        _with(_llama, lambda d: d["spec"].update(adapters=[{"name": "a", "source": "/m/a:b.gguf"}])),
        "spec.adapters",
    ),
    Invalid(
        "vllm-adapter-url",
        _with(_vllm, lambda d: d["spec"].update(adapters=[{"name": "a", "source": "https://h/lora"}])),
        "spec.adapters",
    ),
    Invalid(
        "vllm-adapter-scale",
        _with(_vllm, lambda d: d["spec"].update(adapters=[{"name": "a", "source": "o/a", "scale": 0.5}])),
        "spec.adapters",
    ),
    Invalid(
        "adapter-name-with-equals",
        _with(_vllm, lambda d: d["spec"].update(adapters=[{"name": "a=b", "source": "o/a"}])),
        "spec.adapters",
    ),
    Invalid(
        "adapter-source-with-comma",
        _with(_llama, lambda d: d["spec"].update(adapters=[{"name": "a", "source": "a.gguf,b.gguf"}])),
        "spec.adapters",
    ),
    Invalid(
        "vllm-lora-rank-not-a-choice",
        _with(_vllm, lambda d: d["spec"]["vllm"].update(maxLoraRank=24)),
        "spec.vllm.maxLoraRank",
    ),
    Invalid(
        "on-demand-max-wait-zero",
        _with(_mode, lambda d: d["spec"].update(mode="onDemand", onDemand={"maxWaitSeconds": 0})),
        "spec.onDemand.maxWaitSeconds",
    ),
]


def engine(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"engine": "vllm", "model": {"source": "org/model", "servedName": "m"}}
    base.update(spec)
    return {
        "apiVersion": "roundhouse.dev/v1alpha1",
        "kind": "InferenceEngine",
        "metadata": {"name": "e"},
        "spec": base,
    }


VALID_SPECS: dict[str, dict[str, Any]] = {
    "vllm-defaults-one-gpu": engine(),
    "vllm-tp2-on-2-gpus": engine(gpus=2, vllm={"tensorParallelSize": 2}),
    "vllm-tp2-pp2-on-4-gpus": engine(gpus=4, vllm={"tensorParallelSize": 2, "pipelineParallelSize": 2}),
    "vllm-multinode-tp8-pp2-2-nodes": engine(
        gpus=8, vllm={"tensorParallelSize": 8, "pipelineParallelSize": 2, "nodes": 2}
    ),
    "vllm-cpu": engine(gpus=0),
    "vllm-gpu-util-one": engine(vllm={"gpuMemoryUtilization": 1}),
    "vllm-tools-with-parser": engine(vllm={"enableAutoToolChoice": True, "toolCallParser": "hermes"}),
    "vllm-zero-replicas": engine(replicas=0),
    "llamacpp-first-shard": engine(
        engine="llamacpp",
        model={"source": "/m/x-00001-of-00004.GGUF", "servedName": "x"},
        gpus=4,
        llamacpp={"tensorSplit": [3, 1, 1, 1], "gpuLayers": "all"},
    ),
    "llamacpp-gpu-layers-number": engine(
        engine="llamacpp", model={"source": "https://h/x.gguf", "servedName": "x"}, llamacpp={"gpuLayers": 0}
    ),
    "llamacpp-existing-server-any-source": engine(
        engine="llamacpp", model={"source": "tiny", "servedName": "x"}, endpoints=["http://127.0.0.1:8081"]
    ),
    "ollama-tag": engine(engine="ollama", model={"source": "llama3.1:8b", "servedName": "llama3.1:8b"}),
    "external-gpus-zero": engine(engine="external", gpus=0, external={"baseURL": "https://api.example.com/v1"}),
    "sglang-defaults-one-gpu": engine(engine="sglang"),
    "sglang-tp2-dp2-on-4-gpus": engine(
        engine="sglang", gpus=4, sglang={"tensorParallelSize": 2, "dataParallelSize": 2}
    ),
    "sglang-chunked-prefill-off": engine(engine="sglang", sglang={"chunkedPrefillSize": -1}),
    "vllm-adapters": engine(adapters=[{"name": "sql", "source": "org/sql-lora"}, {"name": "b", "source": "/m/b"}]),
    "vllm-lora-sized-ahead": engine(vllm={"maxLoraRank": 64, "maxLoras": 4}),
    "llamacpp-adapters": engine(
        engine="llamacpp",
        model={"source": "x.gguf", "servedName": "x"},
        adapters=[{"name": "a", "source": "https://h:8443/a.GGUF", "scale": 0.5}, {"name": "b", "source": "b.gguf"}],
    ),
    "sglang-adapters": engine(engine="sglang", adapters=[{"name": "sql", "source": "org/sql-lora"}]),
}

_BAD_SPECS: dict[str, tuple[dict[str, Any], str]] = {
    "vllm-two-gpus-no-tp": (engine(gpus=2), "spec.gpus"),
    "vllm-tp-on-fewer-gpus": (engine(gpus=1, vllm={"tensorParallelSize": 2}), "tensorParallelSize"),
    "vllm-multinode-count-wrong": (
        engine(gpus=8, vllm={"tensorParallelSize": 8, "nodes": 2}),
        "spec.vllm.nodes",
    ),
    "llamacpp-tensor-split-default-gpu": (
        engine(engine="llamacpp", model={"source": "x.gguf", "servedName": "x"}, llamacpp={"tensorSplit": [1, 1]}),
        "spec.llamacpp.tensorSplit",
    ),
    "llamacpp-negative-layers": (
        engine(engine="llamacpp", model={"source": "x.gguf", "servedName": "x"}, llamacpp={"gpuLayers": -3}),
        "spec.llamacpp.gpuLayers",
    ),
    "ollama-with-vllm-section": (
        engine(engine="ollama", model={"source": "a:b", "servedName": "a"}, vllm={}),
        "spec.vllm",
    ),
    "external-section-on-vllm": (engine(external={"baseURL": "https://a/v1"}), "spec.external"),
    "sglang-parallel-product-not-gpus": (
        engine(engine="sglang", gpus=2, sglang={"tensorParallelSize": 2, "pipelineParallelSize": 2}),
        "spec.sglang.tensorParallelSize * dataParallelSize * pipelineParallelSize",
    ),
    "sglang-section-on-vllm": (engine(sglang={}), "spec.sglang"),
    "sglang-unknown-quantization": (
        engine(engine="sglang", sglang={"quantization": "marlin"}),
        "spec.sglang.quantization",
    ),
    "sglang-chunked-prefill-zero": (
        engine(engine="sglang", sglang={"chunkedPrefillSize": 0}),
        "spec.sglang.chunkedPrefillSize",
    ),
    "sglang-mem-fraction-one": (
        engine(engine="sglang", sglang={"memFractionStatic": 1}),
        "spec.sglang.memFractionStatic",
    ),
    "sglang-extra-args-repeat-port": (
        engine(engine="sglang", sglang={"extraArgs": ["--port=1"]}),
        "spec.sglang.extraArgs",
    ),
    "endpoint-not-url": (engine(endpoints=["localhost:8000"]), "spec.endpoints"),
    "served-name-with-space": (
        engine(model={"source": "a", "servedName": "my model"}),
        "spec.model.servedName",
    ),
    "empty-source": (engine(model={"source": "", "servedName": "m"}), "spec.model.source"),
    "negative-gpus": (engine(gpus=-1), "spec.gpus"),
    "keep-alive-garbage": (
        engine(engine="ollama", model={"source": "a:b", "servedName": "a"}, ollama={"keepAlive": "forever"}),
        "spec.ollama.keepAlive",
    ),
}


INVALID += [Invalid(name, (lambda d=doc: copy.deepcopy(d)), field) for name, (doc, field) in _BAD_SPECS.items()]

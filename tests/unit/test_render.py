"""render(): golden manifests for every example engine, plus the flags users rely on, asserted directly."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Any

import pytest
import yaml

from roundhouse_api import InferenceEngine
from roundhouse_api.engine import Probes
from roundhouse_api.families import DEFAULT_HELPER_IMAGE
from roundhouse_api.families.llamacpp import gguf_files
from roundhouse_operator.render import render
from tests.support.manifests import roundhouse_examples

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def example(name: str) -> InferenceEngine:
    for doc in roundhouse_examples():
        if doc["kind"] == "InferenceEngine" and doc["metadata"]["name"] == name:
            doc = {**doc, "metadata": {**doc["metadata"], "namespace": "models", "uid": "00000000-test-uid"}}
            return InferenceEngine.model_validate(doc)
    raise KeyError(name)


ENGINES = [d["metadata"]["name"] for d in roundhouse_examples() if d["kind"] == "InferenceEngine"]


def objects(name: str) -> dict[str, dict[str, Any]]:
    engine = example(name)
    return {o["kind"]: o for o in render(engine, engine.spec.replicas)}


def container(name: str) -> dict[str, Any]:
    return objects(name)["Deployment"]["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def args(name: str) -> list[str]:
    return container(name).get("args", [])  # type: ignore[no-any-return]


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.mark.parametrize("name", ENGINES)
def test_render_matches_golden(name: str) -> None:
    engine = example(name)
    text = yaml.safe_dump_all(render(engine, engine.spec.replicas), sort_keys=True)
    path = GOLDEN / f"{name}.yaml"
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"no golden file {path.name}: run `make golden`"
    assert text == path.read_text(), f"{path.name} differs: review the change, then `make golden`"


def test_llamacpp_gemma_flags() -> None:
    a = args("gemma-3-12b")
    assert container("gemma-3-12b")["command"] == ["/app/llama-server"]
    assert flag(a, "--model") == "/models/gguf/gemma-3-12b-it-Q5_K_M.gguf"
    assert (flag(a, "--ctx-size"), flag(a, "--n-gpu-layers"), flag(a, "--threads"), flag(a, "--parallel")) == (
        "8192", "35", "8", "2",
    )  # fmt: skip
    assert flag(a, "--flash-attn") == "on"
    assert "--metrics" in a
    assert flag(a, "--alias") == "gemma-3-12b,gemma3"
    assert (flag(a, "--host"), flag(a, "--port")) == ("0.0.0.0", "8080")
    init = objects("gemma-3-12b")["Deployment"]["spec"]["template"]["spec"]["initContainers"][0]
    # The URL is an argument of the operator's own fetch helper: no shell ever parses it.
    assert init["image"] == DEFAULT_HELPER_IMAGE
    assert init["command"] == [
        "roundhouse-fetch",
        "--dest",
        "/models/gguf",
        "https://huggingface.co/unsloth/gemma-3-12b-it-GGUF/resolve/main/gemma-3-12b-it-Q5_K_M.gguf",
    ]
    assert init["volumeMounts"] == [{"name": "model-cache", "mountPath": "/models"}]
    assert objects("gemma-3-12b")["PersistentVolumeClaim"]["spec"]["resources"]["requests"]["storage"] == "20Gi"


def test_vllm_llama_70b_tp2_flags() -> None:
    a = args("llama-3-1-70b")
    assert container("llama-3-1-70b")["command"] == ["vllm", "serve"]
    assert a[0] == "meta-llama/Llama-3.1-70B-Instruct"
    assert flag(a, "--tensor-parallel-size") == "2"
    assert flag(a, "--gpu-memory-utilization") == "0.92"
    assert flag(a, "--max-model-len") == "4096"
    assert flag(a, "--max-num-seqs") == "32"
    assert "--enable-chunked-prefill" in a
    assert "--enable-auto-tool-choice" in a and flag(a, "--tool-call-parser") == "llama3_json"
    assert flag(a, "--port") == "8000"
    pod = objects("llama-3-1-70b")["Deployment"]["spec"]["template"]["spec"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "20Gi"}} in pod["volumes"]
    assert container("llama-3-1-70b")["resources"]["limits"]["nvidia.com/gpu"] == 2
    env = {e["name"]: e for e in container("llama-3-1-70b")["env"]}
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf-token", "key": "token"}}
    assert "value" not in env["HF_TOKEN"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [
        {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-H100-80GB-HBM3"]},
    ]}]  # fmt: skip


def test_vllm_single_gpu_has_no_shm_and_lists_aliases() -> None:
    a = args("qwen2-5-7b")
    served = a[a.index("--served-model-name") + 1 : a.index("--host")]
    assert served == ["qwen2.5-7b-instruct", "qwen"]
    pod = objects("qwen2-5-7b")["Deployment"]["spec"]["template"]["spec"]
    assert all(v["name"] != "dshm" for v in pod["volumes"])
    assert objects("qwen2-5-7b")["Deployment"]["spec"]["replicas"] == 2
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_sglang_serves_the_llm_backend_with_its_key_from_the_secret() -> None:
    c = container("qwen2-5-7b-sglang")
    argv = c["args"]
    assert c["command"] == ["sglang", "serve"]
    # --model-type llm: no fetch of model_index.json from the Hub to tell diffusion from language models.
    assert argv[:4] == ["--model-type", "llm", "--model-path", "Qwen/Qwen2.5-7B-Instruct"]
    assert (flag(argv, "--served-model-name"), flag(argv, "--port"), flag(argv, "--host")) == (
        "qwen2.5-7b-instruct", "30000", "0.0.0.0")  # fmt: skip
    assert [flag(argv, f) for f in ("--tp-size", "--dp-size", "--pp-size")] == ["1", "1", "1"]
    assert flag(argv, "--context-length") == "32768" and "--enable-metrics" in argv
    # The key reaches the engine through the kubelet's $(VAR) expansion, never in the pod spec itself.
    assert flag(argv, "--api-key") == "$(SGLANG_API_KEY)"
    key = next(e for e in c["env"] if e["name"] == "SGLANG_API_KEY")
    assert key["valueFrom"] == {"secretKeyRef": {"name": "sglang-api-key", "key": "apiKey"}}
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert {"mountPath": "/dev/shm", "name": "dshm"} in c["volumeMounts"]


def test_split_gguf_gpt_oss_across_four_gpus() -> None:
    a = args("gpt-oss-120b")
    assert flag(a, "--model") == "/models/gguf/gpt-oss-120b-mxfp4-00001-of-00003.gguf"
    assert flag(a, "--tensor-split") == "1,1,1,1"
    assert flag(a, "--split-mode") == "layer"
    assert flag(a, "--n-gpu-layers") == "all"
    command = objects("gpt-oss-120b")["Deployment"]["spec"]["template"]["spec"]["initContainers"][0]["command"]
    assert [posixpath.basename(u) for u in command[3:]] == [
        f"gpt-oss-120b-mxfp4-0000{i}-of-00003.gguf" for i in (1, 2, 3)
    ]
    assert container("gpt-oss-120b")["resources"]["requests"]["nvidia.com/gpu"] == 4


def test_gguf_shards_are_derived_from_the_first() -> None:
    assert gguf_files("/m/x-00001-of-00002.gguf") == ["/m/x-00001-of-00002.gguf", "/m/x-00002-of-00002.gguf"]
    assert gguf_files("/m/x.gguf") == ["/m/x.gguf"]


def test_ollama_serves_as_pid_1_and_a_sidecar_pulls_before_ready() -> None:
    c = container("llama3-1-8b-ollama")
    assert c["command"] == ["ollama", "serve"] and "args" not in c
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["OLLAMA_HOST"] == "0.0.0.0:11434"
    assert (env["OLLAMA_NUM_PARALLEL"], env["OLLAMA_KEEP_ALIVE"], env["OLLAMA_MAX_LOADED_MODELS"]) == ("4", "-1", "1")
    assert env["OLLAMA_MODELS"] == "/models/ollama"
    pod = objects("llama3-1-8b-ollama")["Deployment"]["spec"]["template"]["spec"]
    puller = pod["containers"][1]
    assert puller["command"] == ["roundhouse-ollama-pull", "--url", "http://127.0.0.1:11434", "--model", "llama3.1:8b"]
    assert puller["image"] == DEFAULT_HELPER_IMAGE
    assert puller["volumeMounts"] == c["volumeMounts"]
    # Ready (and started) only once the model is there: Ollama's own GET /v1/models/<tag>, no exec.
    assert c["readinessProbe"]["httpGet"] == {"path": "/v1/models/llama3.1:8b", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/v1/models/llama3.1:8b", "port": "http"}
    assert "exec" not in c["readinessProbe"]
    # Ollama drops running requests at SIGTERM: the pod keeps serving 15 s after endpoints drop it.
    assert c["lifecycle"] == {"preStop": {"sleep": {"seconds": 15}}}
    assert pod["terminationGracePeriodSeconds"] == 45
    assert c["livenessProbe"]["httpGet"]["path"] == "/api/version"


def test_an_ollama_tag_with_a_namespace_is_checked_by_ollama_show() -> None:
    # Ollama's /v1/models/:model route takes one path segment; "user/model:tag" would never match it.
    engine = example("llama3-1-8b-ollama")
    engine.spec.model.source = "someone/llama3.1:8b"
    deployment = next(o for o in render(engine, 1) if o["kind"] == "Deployment")
    c = deployment["spec"]["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["exec"]["command"] == ["ollama", "show", "someone/llama3.1:8b"]
    assert c["startupProbe"]["exec"]["command"] == ["ollama", "show", "someone/llama3.1:8b"]


def test_external_and_endpoint_engines_render_nothing() -> None:
    assert objects("qwen-external") == {}
    engine = example("qwen2-5-7b")
    engine.spec.endpoints = ["http://10.1.2.3:8000"]
    assert render(engine, 1) == []


def test_every_object_is_owned_and_labelled() -> None:
    for name in ("gemma-3-12b", "qwen2-5-7b", "llama3-1-8b-ollama"):
        for obj in objects(name).values():
            meta = obj["metadata"]
            assert meta["ownerReferences"][0]["kind"] == "InferenceEngine"
            assert meta["ownerReferences"][0]["controller"] is True
            assert meta["labels"]["roundhouse.dev/engine"] == name
            assert meta["labels"]["app.kubernetes.io/managed-by"] == "roundhouse-operator"
            assert "roundhouse.dev/rendered-hash" in meta["annotations"]


def test_probes_allow_long_loads_then_check_readiness() -> None:
    c = container("llama-3-1-70b")
    startup = c["startupProbe"]
    assert startup["httpGet"]["path"] == "/health"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    # A started engine is noticed within a second; after startup, probes keep their period.
    assert startup["periodSeconds"] == 1
    assert c["readinessProbe"]["periodSeconds"] == c["livenessProbe"]["periodSeconds"] == 10


@pytest.mark.parametrize(("period", "timeout"), [(10, 1800), (1, 10), (30, 86400), (5, 15)])
def test_the_fast_startup_probe_keeps_the_whole_startup_window(period: int, timeout: int) -> None:
    engine = example("llama-3-1-70b")
    engine.spec.probes = Probes(period_seconds=period, startup_timeout_seconds=timeout)
    c = next(o for o in render(engine, 1) if o["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    startup = c["startupProbe"]
    assert startup["periodSeconds"] == min(period, 1)
    assert startup["periodSeconds"] * startup["failureThreshold"] == timeout
    assert c["readinessProbe"]["periodSeconds"] == period and c["livenessProbe"]["periodSeconds"] == period


def test_spec_change_changes_hash_and_replicas_only_change_replicas() -> None:
    engine = example("qwen2-5-7b")
    one, two = render(engine, 1), render(engine, 2)
    assert one[0]["spec"]["replicas"] == 1 and two[0]["spec"]["replicas"] == 2
    assert one[1] == two[1]  # the Service is untouched by scaling
    assert one[0]["metadata"]["annotations"] != two[0]["metadata"]["annotations"]


def test_user_affinity_gets_gpu_requirements_anded_in() -> None:
    engine = example("llama-3-1-70b")
    engine.spec.gpu_memory_mi_b = 81000
    zone = {"key": "zone", "operator": "In", "values": ["a"]}
    engine.spec.affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [zone]}]}}}  # fmt: skip
    dep = render(engine, 1)[1]
    exprs = dep["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchExpressions"]  # fmt: skip
    assert [e["key"] for e in exprs] == ["zone", "nvidia.com/gpu.product", "nvidia.com/gpu.memory"]
    assert exprs[2] == {"key": "nvidia.com/gpu.memory", "operator": "Gt", "values": ["80999"]}
    assert engine.spec.affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchExpressions"] == [{"key": "zone", "operator": "In", "values": ["a"]}]  # fmt: skip

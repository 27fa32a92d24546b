"""engine_status() phases and conditions, and the ModelFits estimate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from roundhouse_api import InferenceEngine, Phase
from roundhouse_operator.fit import Fit, estimate, parameters_billions
from roundhouse_operator.plan import EnginePlan
from roundhouse_operator.status import Observed, engine_status
from tests.support.manifests import engine

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
FITS = Fit(True, "Fits", "ok")


def ie(**spec: Any) -> InferenceEngine:
    doc = engine(**spec)
    doc["metadata"] = {"name": "e", "namespace": "ns", "generation": 3, "uid": "u"}
    return InferenceEngine.model_validate(doc)


def pod(
    phase: str = "Running", scheduled: bool = True, message: str = "", waiting: str | None = None
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "conditions": [
        {"type": "PodScheduled", "status": "True" if scheduled else "False", "reason": "Unschedulable",
         "message": message}]}  # fmt: skip
    if waiting:
        status["containerStatuses"] = [{"state": {"waiting": {"reason": waiting, "message": "boom"}}}]
    return {"metadata": {"name": "p"}, "status": status}


def observe(
    replicas: int = 1, ready: int = 0, pods: list[dict[str, Any]] | None = None, active: bool = True,
    held: bool = False, e: InferenceEngine | None = None, **kw: Any,
) -> Observed:  # fmt: skip
    deployment = {"status": {"replicas": len(pods or []), "readyReplicas": ready}}
    return Observed(e or ie(), EnginePlan(replicas, active, held), deployment, pods or [], FITS, **kw)


CASES = {
    "all-ready": (observe(2, 2, [pod(), pod()]), Phase.READY, "2/2"),
    "some-ready": (observe(2, 1, [pod(), pod()]), Phase.DEGRADED, "1/2"),
    "loading": (observe(1, 0, [pod()]), Phase.STARTING, "0/1"),
    "unschedulable": (observe(1, 0, [pod("Pending", False, "0/4 nodes: Insufficient nvidia.com/gpu")]), Phase.PENDING,
                      "0/1"),
    "crashloop": (observe(1, 0, [pod(waiting="CrashLoopBackOff")]), Phase.FAILED, "0/1"),
    "switched-off": (observe(0, 0, [], active=False, mode_name="default"), Phase.STANDBY, "0/0"),
    "held-for-switch": (observe(0, 0, [], held=True), Phase.PENDING, "0/0"),
    "scaled-to-zero": (observe(0, 0, []), Phase.STANDBY, "0/0"),
    "bad-config": (observe(1, 0, [], config_error="spec.vllm.nodes > 1 needs LeaderWorkerSet"), Phase.FAILED, "0/1"),
    "external-ok": (observe(0, 0, e=ie(engine="external", external={"baseURL": "https://x/v1"}), probe_ok=True,
                            probe_message="answered 200"), Phase.READY, "1/1"),
    "external-down": (observe(0, 0, e=ie(engine="external", external={"baseURL": "https://x/v1"}), probe_ok=False,
                              probe_message="unreachable"), Phase.FAILED, "0/1"),
}  # fmt: skip


@pytest.mark.parametrize(("observed", "phase", "ready"), CASES.values(), ids=list(CASES))
def test_phase_and_ready_column(observed: Observed, phase: Phase, ready: str) -> None:
    st = engine_status(observed, None, NOW)
    assert st.phase == phase
    assert st.ready == ready
    conds = {c.type: c for c in st.conditions}
    assert set(conds) == {"ConfigValid", "Applied", "References", "Scheduled", "ModelFits", "Ready"}
    assert conds["Ready"].status == ("True" if phase == Phase.READY else "False")
    assert all(c.observed_generation == 3 for c in st.conditions)
    assert st.observed_generation == 3


def test_scheduled_false_carries_the_schedulers_message() -> None:
    msg = "0/4 nodes are available: 2 Insufficient nvidia.com/gpu."
    st = engine_status(observe(1, 0, [pod("Pending", False, msg)]), None, NOW)
    sched = next(c for c in st.conditions if c.type == "Scheduled")
    assert (sched.status, sched.reason, sched.message) == ("False", "Unschedulable", msg)
    assert st.message == msg


def test_unchanged_conditions_keep_their_transition_time() -> None:
    first = engine_status(observe(1, 0, [pod()]), None, NOW)
    again = engine_status(observe(1, 0, [pod()]), first, NOW + timedelta(minutes=5))
    assert [c.last_transition_time for c in again.conditions] == [c.last_transition_time for c in first.conditions]
    ready = engine_status(observe(1, 1, [pod()]), first, NOW + timedelta(minutes=6))
    times = {c.type: c.last_transition_time for c in ready.conditions}
    assert times["Ready"] == NOW + timedelta(minutes=6) and times["ConfigValid"] == NOW


def test_endpoint_and_selector() -> None:
    st = engine_status(observe(1, 1, [pod()]), None, NOW)
    assert st.endpoint == "http://e.ns.svc:8000/v1"
    assert st.selector == "roundhouse.dev/engine=e"


@pytest.mark.parametrize(
    ("source", "served", "expected"),
    [("meta-llama/Llama-3.1-70B-Instruct", "x", 70), ("Qwen/Qwen2.5-7B-Instruct", "x", 7),
     ("/m/gemma-3-12b-it-Q5_K_M.gguf", "x", 12), ("llama3.1:8b", "x", 8), ("org/model", "mistral-7b", 7),
     ("org/model", "mystery", None)],
)  # fmt: skip
def test_parameters_from_the_name(source: str, served: str, expected: float | None) -> None:
    assert parameters_billions(ie(model={"source": source, "servedName": served}).spec) == expected


def test_70b_in_bf16_does_not_fit_one_h100_and_says_why() -> None:
    spec = ie(model={"source": "meta-llama/Llama-3.1-70B-Instruct", "servedName": "l"}).spec
    fit = estimate(spec, 81559)
    assert fit.fits is False and fit.reason == "DoesNotFit"
    assert "weights 130.4 GiB at 16 bits for 70B parameters" in fit.message
    assert "1 GPU(s) x 81559 MiB" in fit.message


def test_70b_fp8_fits_two_h100() -> None:
    spec = ie(model={"source": "meta-llama/Llama-3.1-70B-Instruct", "servedName": "l"}, gpus=2,
              vllm={"tensorParallelSize": 2, "quantization": "fp8", "maxModelLen": 4096}).spec  # fmt: skip
    assert estimate(spec, 81559).fits is True


def test_sglang_fits_by_its_memory_share_and_each_data_parallel_copy_holds_the_weights() -> None:
    llama70 = {"source": "meta-llama/Llama-3.1-70B-Instruct", "servedName": "l"}
    tp4 = ie(engine="sglang", model=llama70, gpus=4, sglang={"tensorParallelSize": 4, "contextLength": 4096}).spec
    assert estimate(tp4, 81559).fits is True
    # The same four GPUs as four copies of one GPU each: 130 GiB of bf16 weights on each.
    dp4 = ie(engine="sglang", model=llama70, gpus=4, sglang={"dataParallelSize": 4, "contextLength": 4096}).spec
    fit = estimate(dp4, 81559)
    assert (
        fit.fits is False and "1 GPU(s) x 81559 MiB" in fit.message and "each of 4 data-parallel copies" in fit.message
    )


def test_llamacpp_partial_offload_suggests_gpu_layers() -> None:
    spec = ie(engine="llamacpp", model={"source": "/m/Llama-3.1-70B-Q8_0.gguf", "servedName": "l"},
              llamacpp={"contextSize": 8192}).spec  # fmt: skip
    fit = estimate(spec, 24576)
    assert fit.fits is False and fit.reason == "PartialOffload"
    assert fit.suggested_gpu_layers is not None and 0 < fit.suggested_gpu_layers < 80
    assert f"gpuLayers about {fit.suggested_gpu_layers}" in fit.message


def test_unknowns_are_said_not_guessed() -> None:
    assert estimate(ie(model={"source": "org/model", "servedName": "m"}).spec, 81559).reason == "UnknownModelSize"
    sized = ie(model={"source": "a/B-7B", "servedName": "m"}).spec
    assert estimate(sized, None).reason == "UnknownGPUMemory"
    declared = ie(model={"source": "a/B-7B", "servedName": "m"}, gpuMemoryMiB=24576).spec
    assert estimate(declared, None).fits is True
    assert estimate(ie(gpus=0).spec, 81559).fits is None


def test_an_object_the_api_server_refused_fails_the_engine_with_its_message() -> None:
    why = 'Deployment.apps "e" is invalid: spec.template.spec.containers[0].resources.requests[cpu]: Invalid value'
    st = engine_status(observe(1, 0, [], apply_error=("Deployment", why)), None, NOW)
    conds = {c.type: c for c in st.conditions}
    assert st.phase == Phase.FAILED and why in (st.message or "")
    assert (conds["Applied"].status, conds["Applied"].reason, conds["Applied"].message) == (
        "False", "RefusedDeployment", why)  # fmt: skip
    assert conds["ConfigValid"].status == "True"  # the spec passed the schema; the rendered object did not
    ok = engine_status(observe(1, 1, [pod()]), None, NOW)
    assert {c.type: c.status for c in ok.conditions}["Applied"] == "True"


def test_a_crash_loop_says_how_the_container_last_ended() -> None:
    crashing = pod(waiting="CrashLoopBackOff")
    crashing["status"]["containerStatuses"][0]["lastState"] = {
        "terminated": {"exitCode": 1, "reason": "Error", "message": "error: invalid argument: --mlock"}}  # fmt: skip
    st = engine_status(observe(1, 0, [crashing]), None, NOW)
    assert st.phase == Phase.FAILED
    message = st.message or ""
    assert "CrashLoopBackOff" in message and "last exit code 1 (Error): error: invalid argument: --mlock" in message


def config_error_pod(message: str, init: bool = False) -> dict[str, Any]:
    waiting = {"state": {"waiting": {"reason": "CreateContainerConfigError", "message": message}}}
    return {"metadata": {"name": "e-0"}, "status": {"phase": "Pending",
            "initContainerStatuses" if init else "containerStatuses": [waiting]}}  # fmt: skip


def references(st: Any) -> Any:
    return next(c for c in st.conditions if c.type == "References")


@pytest.mark.parametrize("init", [False, True], ids=["engine", "init-container"])
def test_a_missing_hf_token_secret_is_named_with_its_field(init: bool) -> None:
    e = ie(model={"source": "org/m", "servedName": "m", "hfTokenSecretRef": {"name": "hf", "key": "token"}})
    st = engine_status(observe(1, 0, [config_error_pod('secret "hf" not found', init)], e=e), None, NOW)
    ref = references(st)
    assert (st.phase, ref.status, ref.reason) == (Phase.FAILED, "False", "MissingSecret")
    assert ref.message.startswith("spec.model.hfTokenSecretRef: Secret hf does not exist")
    assert st.message == ref.message


def test_a_missing_key_of_a_secret_named_by_env_is_reported() -> None:
    msg = "couldn't find key password in Secret ns/db"
    st = engine_status(observe(1, 0, [config_error_pod(msg)]), None, NOW)
    ref = references(st)
    assert ref.reason == "MissingSecret" and ref.message.startswith("Secret db has no key 'password'")


def test_an_unreadable_external_api_key_is_a_missing_secret_and_fails_the_engine() -> None:
    e = ie(engine="external", external={"baseURL": "https://x/v1", "apiKeySecretRef": {"name": "k", "key": "key"}})
    why = "spec.external.apiKeySecretRef: Secret k does not exist in namespace ns"
    st = engine_status(observe(0, 0, e=e, probe_ok=False, probe_message=why, missing_secret=why), None, NOW)
    assert (st.phase, st.message) == (Phase.FAILED, why)
    assert (references(st).reason, references(st).message) == ("MissingSecret", why)


def test_other_config_errors_are_not_taken_for_a_missing_secret() -> None:
    st = engine_status(observe(1, 0, [config_error_pod("container has runAsNonRoot and image will run as root")]),
                       None, NOW)  # fmt: skip
    assert references(st).status == "True" and st.phase == Phase.FAILED

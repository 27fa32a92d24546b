"""Operator and control loop at scale, on the local control plane with simulated GPU nodes.

- 10, 100 and 1,000 InferenceEngines applied at once: time until all are Ready, operator CPU
  seconds and peak RSS, API requests per engine reconciled (the operator's own counter).
- The floor for the same work without the operator, in the same run: the Deployments and Services
  the operator would render for those engines, server-side applied from 16 threads (as the
  operator does), until every Deployment is available. And a second floor with the engines' own
  `kubectl apply` running beside those threads (the operator run's clock starts with it too).
- A mode switch with 100 governed engines: `kubectl patch enginemode` to EngineMode Ready, and its
  floor: the same Deployments scaled down, their pods waited out, the incoming ones scaled up.
- Where an engine's time goes from ADDED to Ready, over every engine of the run (`timeline`).
A fresh operator process per run; the cluster is a separate one (its own state directory).
Usage: .venv/bin/python bench/operator_scale.py [--sizes 10,100,1000] [--no-floor] [--switches N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("ROUNDHOUSE_BENCH_CLUSTER", "/tmp/roundhouse-bench-cluster"))
os.environ["ROUNDHOUSE_CLUSTER_DIR"] = str(STATE)
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from kubernetes import client as k8s_client  # noqa: E402
from kubernetes import config as k8s_config  # noqa: E402
from kubernetes import watch as k8s_watch  # noqa: E402

from roundhouse_api import GROUP, VERSION, InferenceEngine  # noqa: E402
from roundhouse_operator.kube import Kube  # noqa: E402
from roundhouse_operator.render import ENGINE_LABEL, render  # noqa: E402
from tests.support import cluster as lc  # noqa: E402
from tests.support import processes  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


def engine(name: str, family: str) -> dict[str, Any]:
    source = "qwen2.5:7b" if family == "ollama" else "Qwen/Qwen2.5-7B-Instruct"
    return {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine", "metadata": {"name": name},
            "spec": {"engine": family, "model": {"source": source, "servedName": name}, "gpus": 1}}  # fmt: skip


def proc_stats(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK
    hwm = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return cpu, int(hwm.group(1)) / 1024 if hwm else 0.0  # type: ignore[union-attr]


def api_requests_by_verb(metrics_url: str) -> dict[str, float]:
    text = httpx.get(metrics_url).text
    return {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^roundhouse_operator_api_requests_total\{verb="([^"]*)"\} (\S+)$', text, re.M)}  # fmt: skip


def api_requests(metrics_url: str) -> float:
    return sum(api_requests_by_verb(metrics_url).values())


def passes(metrics_url: str) -> tuple[float, float]:
    """How many namespace passes the operator made, and the seconds they took together."""
    text = httpx.get(metrics_url).text

    def value(name: str) -> float:
        m = re.search(rf"^roundhouse_operator_reconcile_duration_seconds_{name} (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    return value("count"), value("sum")


def observed(c: lc.Cluster, ns: str, plural: str, timeout: float, **selector: str) -> Iterator[dict[str, Any]]:
    """Every `plural` object of `ns` as listed, then each change as watched (one list+watch, resumed
    where it left off); RuntimeError once `timeout` has passed.

    Polling with `kubectl get` instead (every 0.5 s for the engines, every 0.2 s for a switch) cost
    about half a core on this two-core machine (a Go process start and the objects serialised each
    time), slowing what it measured; the floors poll no such thing."""
    api = k8s_client.CustomObjectsApi(k8s_config.new_client_from_config(str(c.kubeconfig)))
    deadline = time.monotonic() + timeout
    listing = api.list_namespaced_custom_object(GROUP, VERSION, ns, plural, **selector)
    yield from listing["items"]
    rv = listing["metadata"]["resourceVersion"]
    while time.monotonic() < deadline:
        for ev in k8s_watch.Watch().stream(api.list_namespaced_custom_object, GROUP, VERSION, ns, plural,
                                           **selector, resource_version=rv, timeout_seconds=30):  # fmt: skip
            rv = ev["object"]["metadata"]["resourceVersion"]
            yield ev["object"]
    raise RuntimeError(f"{plural} of {ns}: not within {timeout} s")


def wait_all_ready(c: lc.Cluster, ns: str, n: int, timeout: float = 600) -> None:
    """Until `n` InferenceEngines of `ns` say phase Ready."""
    phase: dict[str, str] = {}
    for obj in observed(c, ns, "inferenceengines", timeout):
        phase[obj["metadata"]["name"]] = (obj.get("status") or {}).get("phase", "")
        if list(phase.values()).count("Ready") >= n:
            return


def wait_mode(c: lc.Cluster, ns: str, done: Callable[[dict[str, Any]], bool], timeout: float = 600) -> None:
    """Until the EngineMode `default` of `ns` satisfies `done(status)`."""
    for obj in observed(c, ns, "enginemodes", timeout, field_selector="metadata.name=default"):
        if done(obj.get("status") or {}):
            return


def _at(stamp: str | None) -> float | None:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else None


def _ready_at(obj: dict[str, Any], kind: str = "Ready") -> float | None:
    return next((_at(c.get("lastTransitionTime")) for c in (obj.get("status") or {}).get("conditions") or []
                 if c.get("type") == kind and c.get("status") == "True"), None)  # fmt: skip


def timeline(c: lc.Cluster, ns: str) -> dict[str, Any]:
    """Where one engine's time from ADDED to Ready goes, over every engine (the API server's timestamps
    are whole seconds: medians and the 90th percentile over many engines, not one engine's figure)."""
    engines = {i["metadata"]["name"]: i for i in c.list("ie", ns)}
    deployments = {d["metadata"]["name"]: d for d in c.list("deploy", ns)}
    pods = {(p["metadata"].get("labels") or {}).get(ENGINE_LABEL): p for p in c.list("pods", ns)}
    steps: dict[str, list[float]] = {"engine created -> Deployment created": [], "Deployment -> pod created": [],
                                     "pod created -> Deployment available": [],
                                     "Deployment available -> engine Ready": [],
                                     "engine created -> engine Ready": []}  # fmt: skip
    for name, ie in engines.items():
        d, pod = deployments.get(name), pods.get(name)
        if d is None or pod is None:
            continue
        t = [_at(ie["metadata"]["creationTimestamp"]), _at(d["metadata"]["creationTimestamp"]),
             _at(pod["metadata"]["creationTimestamp"]), _ready_at(d, "Available"), _ready_at(ie)]  # fmt: skip
        if None in t:
            continue
        for key, (a, b) in zip(steps, [(0, 1), (1, 2), (2, 3), (3, 4), (0, 4)], strict=True):
            steps[key].append(t[b] - t[a])  # type: ignore[operator]

    def pct(xs: list[float], q: float) -> float:
        return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")

    return {k: {"median_s": pct(v, 0.5), "p90_s": pct(v, 0.9), "max_s": max(v, default=float("nan"))}
            for k, v in steps.items()}  # fmt: skip


def gone(c: lc.Cluster, ns: str) -> None:
    """Delete the namespace and wait until it is gone: garbage-collecting thousands of objects in
    the background would otherwise slow whatever is measured next."""
    c.delete_namespace(ns)
    c.kubectl("wait", "--for=delete", f"namespace/{ns}", "--timeout=900s", check=False)


def run_size(c: lc.Cluster, n: int) -> dict[str, Any]:
    ns = c.create_namespace(f"scale{n}")
    op = processes.operator(c.env, STATE / "logs", namespaces=[ns]).start()
    try:
        docs = [engine(f"e{i:04d}", "vllm") for i in range(n)]
        start = time.monotonic()
        c.apply(docs, ns)
        applied = time.monotonic() - start
        wait_all_ready(c, ns, n)
        elapsed = time.monotonic() - start
        assert [(i.get("status") or {}).get("phase") for i in c.list("ie", ns)].count("Ready") == n
        cpu, rss = proc_stats(op.proc.pid)  # type: ignore[union-attr]
        reqs = api_requests(op.metrics_url)  # type: ignore[attr-defined]
        count, seconds = passes(op.metrics_url)  # type: ignore[attr-defined]
        print(json.dumps({"engines": n, "timeline": timeline(c, ns)}), flush=True)
        return {"engines": n, "apply_s": round(applied, 2), "all_ready_s": round(elapsed, 2),
                "passes": int(count), "pass_seconds": round(seconds, 1),
                "operator_cpu_s": round(cpu, 2), "operator_peak_rss_mib": round(rss, 1),
                "api_requests_per_engine": round(reqs / n, 2)}  # fmt: skip
    finally:
        op.stop()
        gone(c, ns)


def run_floor(c: lc.Cluster, n: int, with_engines: bool = False) -> dict[str, Any]:
    """The same Deployments and Services applied directly, no operator: what the control plane alone needs.
    `with_engines`: the user's own step in it too, the InferenceEngines applied by the same `kubectl apply`
    as the operator run beside the 16 threads, until they are all created and every Deployment is
    available: the same writes, less the operator's status writes, watches and CPU."""
    ns = c.create_namespace(f"floorie{n}" if with_engines else f"floor{n}")
    try:
        docs = [engine(f"e{i:04d}", "vllm") for i in range(n)]
        objects = _rendered(ns, docs, {"vllm": 1})
        k8s_config.load_kube_config(str(c.kubeconfig))
        kube = Kube()
        apps = k8s_client.AppsV1Api(k8s_config.new_client_from_config(str(c.kubeconfig)))
        start = time.monotonic()
        with ThreadPoolExecutor(1) as user:
            engines_applied = user.submit(c.apply, docs, ns) if with_engines else None
            apply_all(kube, objects)
            applied = time.monotonic() - start
            _until_available(apps, ns, {d["metadata"]["name"] for d in docs})
            if engines_applied is not None:
                engines_applied.result()
        return {"engines": n, "apply_s": round(applied, 2), "all_available_s": round(time.monotonic() - start, 2)}
    finally:
        gone(c, ns)


def _rendered(ns: str, docs: list[dict[str, Any]], replicas: dict[str, int]) -> list[dict[str, Any]]:
    """The Deployments and Services the operator renders for `docs`, with no owner (none exists here)."""
    out = []
    for i, doc in enumerate(docs):
        doc = {**doc, "metadata": {**doc["metadata"], "namespace": ns, "uid": f"floor-{i}", "generation": 1}}
        for obj in render(InferenceEngine.model_validate(doc), replicas[doc["spec"]["engine"]]):
            obj["metadata"].pop("ownerReferences", None)
            out.append(obj)
    return out


def _until_available(apps: Any, ns: str, names: set[str]) -> None:
    available: set[str] = set()
    w = k8s_watch.Watch()
    for ev in w.stream(apps.list_namespaced_deployment, ns, timeout_seconds=600):
        d = ev["object"]
        if d.metadata.name in names and (d.status.available_replicas or 0) >= 1:
            available.add(d.metadata.name)
        if available >= names:
            w.stop()


def apply_all(kube: Kube, objects: list[dict[str, Any]]) -> None:
    """Server-side apply from 16 threads, as the operator does."""
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(kube.apply, objects))


def names(docs: list[dict[str, Any]], family: str) -> set[str]:
    return {d["metadata"]["name"] for d in docs if d["spec"]["engine"] == family}


def deployments(ns: str, docs: list[dict[str, Any]], family: str, replicas: int) -> list[dict[str, Any]]:
    """The Deployments of `family`'s engines among `docs`, rendered at `replicas`."""
    ours = [d for d in docs if d["spec"]["engine"] == family]
    return [o for o in _rendered(ns, ours, {family: replicas}) if o["kind"] == "Deployment"]


def switch_docs(n: int) -> list[dict[str, Any]]:
    return [engine(f"v{i:03d}", "vllm") for i in range(n // 2)] + [engine(f"o{i:03d}", "ollama")
                                                                   for i in range(n // 2)]  # fmt: skip


def run_switch_floor(c: lc.Cluster, n: int = 100) -> dict[str, Any]:
    """What a switch must do, without the operator: scale the vLLM engines' Deployments to zero, wait until
    their pods are gone (the GPUs free), then scale the Ollama ones up and wait until they are available."""
    ns = c.create_namespace("switchfloor")
    try:
        docs = switch_docs(n)
        k8s_config.load_kube_config(str(c.kubeconfig))
        kube = Kube()
        api = k8s_config.new_client_from_config(str(c.kubeconfig))
        apps, core = k8s_client.AppsV1Api(api), k8s_client.CoreV1Api(api)
        apply_all(kube, _rendered(ns, docs, {"vllm": 1, "ollama": 0}))
        _until_available(apps, ns, names(docs, "vllm"))
        start = time.monotonic()
        apply_all(kube, deployments(ns, docs, "vllm", 0))
        lc.wait_until(lambda: not core.list_namespaced_pod(ns).items, 600, "vLLM pods gone", interval=0.2)
        apply_all(kube, deployments(ns, docs, "ollama", 1))
        _until_available(apps, ns, names(docs, "ollama"))
        return {"governed_engines": n, "floor_s": round(time.monotonic() - start, 2)}
    finally:
        gone(c, ns)


def run_switch(c: lc.Cluster, n: int = 100) -> dict[str, Any]:
    ns = c.create_namespace("switch")
    op = processes.operator(c.env, STATE / "logs", namespaces=[ns]).start()
    try:
        mode = {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "EngineMode", "metadata": {"name": "default"},
                "spec": {"mode": "vllm", "switchPolicy": {"drainSeconds": 0}}}  # fmt: skip
        c.apply([mode, *switch_docs(n)], ns)
        wait_mode(c, ns, lambda st: st.get("phase") == "Ready", 300)
        custom = k8s_client.CustomObjectsApi(k8s_config.new_client_from_config(str(c.kubeconfig)))
        reqs, cpu = api_requests_by_verb(op.metrics_url), proc_stats(op.proc.pid)[0]  # type: ignore[attr-defined, union-attr]
        # The patch goes through the API client, as the floor's requests do: kubectl's own start-up
        # (about 0.3 s here) is not the operator's time.
        start = time.monotonic()
        custom.patch_namespaced_custom_object(GROUP, VERSION, ns, "enginemodes", "default",
                                              {"spec": {"mode": "ollama"}},
                                              _content_type="application/merge-patch+json")  # fmt: skip
        wait_mode(c, ns, lambda st: st.get("phase") == "Ready" and st.get("activeMode") == "ollama")
        elapsed = time.monotonic() - start
        st = c.get("em", "default", ns)["status"]
        return {"governed_engines": n, "patch_to_ready_s": round(elapsed, 2),
                "operator_reported_s": st.get("lastSwitchSeconds"),
                "api_requests": {verb: int(v - reqs.get(verb, 0)) for verb, v in  # what the switch sent
                                 api_requests_by_verb(op.metrics_url).items() if v > reqs.get(verb, 0)},  # type: ignore[attr-defined]
                "operator_cpu_s": round(proc_stats(op.proc.pid)[0] - cpu, 2)}  # type: ignore[union-attr]  # fmt: skip
    finally:
        op.stop()
        gone(c, ns)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--gpu-nodes", type=int, default=130)
    ap.add_argument("--no-floor", action="store_true", help="skip the no-operator floor runs")
    ap.add_argument("--switches", type=int, default=1, help="switch runs (each with its floor)")
    args = ap.parse_args()
    up = [str(lc.LOCAL_CLUSTER), "up", "--gpu-nodes", str(args.gpu_nodes), "--cpu-nodes", "1", "--no-gpu-taint"]
    subprocess.run(up, check=True, env={**os.environ, "ROUNDHOUSE_CLUSTER_DIR": str(STATE)})
    c = lc.Cluster(kubeconfig=STATE / "kubeconfig")
    c.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    c.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    results: dict[str, Any] = {"scale": [], "floor": [], "floor_with_engines": [], "switch": [], "switch_floor": []}
    ratios: dict[str, list[float]] = {}
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            row = run_size(c, n)
            results["scale"].append(row)
            print(json.dumps(row), flush=True)
            if not args.no_floor:
                floor = run_floor(c, n)
                results["floor"].append(floor)
                ratio = round(row["all_ready_s"] / floor["all_available_s"], 2)
                ratios.setdefault(f"{n} engines", []).append(ratio)
                print(json.dumps({"floor": floor, "operator_over_floor": ratio}), flush=True)
                with_engines = run_floor(c, n, with_engines=True)
                results["floor_with_engines"].append(with_engines)
                ratio = round(row["all_ready_s"] / with_engines["all_available_s"], 2)
                ratios.setdefault(f"{n} engines (floor with the engines' apply)", []).append(ratio)
                print(json.dumps({"floor_with_engines": with_engines, "operator_over_floor_with_engines": ratio}),
                      flush=True)  # fmt: skip
        for _ in range(args.switches):
            switch = run_switch(c)
            results["switch"].append(switch)
            print(json.dumps(switch), flush=True)
            if not args.no_floor:
                floor = run_switch_floor(c)
                results["switch_floor"].append(floor)
                ratio = round(switch["patch_to_ready_s"] / floor["floor_s"], 2)
                ratios.setdefault("switch, 100 engines", []).append(ratio)
                print(json.dumps({"switch_floor": floor, "switch_over_floor": ratio}), flush=True)
        # Each ratio is against the floor measured right after it; the machine's own speed drifts by
        # a third between runs, so the median over repeats is the figure to quote.
        results["median_over_floor"] = {k: statistics.median(v) for k, v in ratios.items()}
    finally:
        subprocess.run([str(lc.LOCAL_CLUSTER), "down"], env={**os.environ, "ROUNDHOUSE_CLUSTER_DIR": str(STATE)})
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

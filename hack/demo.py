"""`make demo`: Roundhouse end to end on this machine, no Docker and no GPU needed.

A real control plane (built from Go modules) and one real node: a kubelet with containerd on this
machine, advertising 8 nvidia.com/gpu (the engines run their CPU builds). The Helm chart runs the
operator and the gateway as pods; the engines are real pods from images built here: a real
llama-server and a real Ollama serving a tiny model, and a vLLM stand-in (vLLM needs a GPU: the
engine simulator answers in its place, behind vLLM's own command line). One request, a `kubectl
patch enginemode`, and the next request served by the other family. Needs root (kubelet,
containerd, network devices).
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import openai  # noqa: E402

from tests.support import chart, tools  # noqa: E402
from tests.support import cluster as lc  # noqa: E402

NS = "roundhouse-system"
RELEASE = "roundhouse"
WORK = REPO / ".demo"
STEPS = 7
BOLD, DIM, OFF = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")
SWITCHED = {"roundhouse.dev/demo": "switched"}  # the engines the EngineMode governs
# What the tour runs: `make demo` depends on the targets that install these (tests/unit/test_setup.py checks).
NEEDS = ("kube-apiserver", "etcd", "kubectl", "helm", "ollama", *tools.REAL_NODE)


_STEP_STARTED: list[float] = []


def step(n: int, text: str) -> None:
    """Start step n, saying how long the step before it took."""
    finished()
    _STEP_STARTED.append(time.monotonic())
    print(f"\n{BOLD}[{n}/{STEPS}] {text}{OFF}", flush=True)


def finished() -> None:
    if _STEP_STARTED:
        note(f"{DIM}({time.monotonic() - _STEP_STARTED[-1]:.1f}s){OFF}")


def note(text: str) -> None:
    print(f"      {text}", flush=True)


def has_real_node(c: lc.Cluster) -> bool:
    return bool(c.list("nodes", namespace="", selector="roundhouse.dev/real-node=true"))


class Demo:
    def __init__(self) -> None:
        self.started_cluster = False
        self.installed = False
        self.cluster: lc.Cluster | None = None

    def run(self, wait: bool) -> None:
        tools.require(*NEEDS)  # one line naming the make target, before anything starts
        WORK.mkdir(exist_ok=True)
        step(1, "Local cluster: a real control plane and a real node (kubelet + containerd on this machine)")
        if lc.is_up() and has_real_node(lc.Cluster()):
            note("reusing the running cluster and its real node")
        elif lc.is_up():
            raise lc.ClusterError("a local cluster without a real node is running: `hack/local-cluster down` first")
        else:
            note("starting the control plane and the real node (built by `make demo` before this: about a minute)")
            env = {**os.environ, "ROUNDHOUSE_GPU_NODES": "0", "ROUNDHOUSE_CPU_NODES": "0"}
            subprocess.run([str(lc.LOCAL_CLUSTER), "up", "--real-nodes", "1"], check=True, env=env)
            self.started_cluster = True
        c = self.cluster = lc.Cluster()
        print(c.kubectl("get", "nodes", "-L", "nvidia.com/gpu.product,nvidia.com/gpu.count").stdout, end="")

        step(2, "helm install: the CRDs, then the operator and the gateway as pods with their ServiceAccounts and RBAC")
        c.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
        c.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        models = chart.write_models(WORK / "models", ["qwen2.5:7b"], WORK / "logs")
        chart.models_volume(c, NS, "demo-models", models)
        self.installed = True
        chart.install(c, RELEASE, NS, "sk-demo", "admin-demo", WORK)
        print(c.kubectl("get", "pods", "-o", "wide", namespace=NS).stdout, end="")

        step(3, "Three engines as real pods: vLLM (stand-in) and Ollama under the EngineMode, llama.cpp always on")
        c.apply(self.resources(), NS)
        lc.wait_until(lambda: self.phases() == {"qwen-vllm": "Ready", "qwen-ollama": "Standby", "tiny-llama": "Ready"},
                      240, "engines in place")  # fmt: skip
        print(c.kubectl("get", "ie,em", "-o", "wide", namespace=NS).stdout, end="")
        print(c.kubectl("get", "pods", "-o", "wide", namespace=NS).stdout, end="")

        step(4, "The gateway pod: one OpenAI URL (its Service, reached through the node's kube-proxy)")
        url = chart.gateway_url(c, RELEASE, NS)
        client = openai.OpenAI(base_url=url + "/v1", api_key="sk-demo", max_retries=2)
        lc.wait_until(lambda: self.ask(client, "qwen", quiet=True), 60, "the gateway to route")
        self.ask(client, "qwen")
        self.ask(client, "tiny")

        step(5, 'kubectl patch enginemode default --type merge -p \'{"spec":{"mode":"ollama"}}\'')
        # Followed as a user would (`kubectl get -w`): one watch, not a kubectl process every fraction of a
        # second, whose CPU would be taken from the switch itself on a small machine.
        fields = '{.status.phase}|{.status.activeMode}|{.status.lastSwitchSeconds}|{.status.message}{"\\n"}'
        watch = subprocess.Popen(["kubectl", "get", "enginemode", "default", "-n", NS, "--watch", "-o",
                                  f"jsonpath={fields}"], env=c.env, stdout=subprocess.PIPE, text=True)  # fmt: skip
        lines: queue.Queue[str] = queue.Queue()

        def pump() -> None:
            for got in watch.stdout or ():
                lines.put(got)

        threading.Thread(target=pump, daemon=True).start()
        try:
            c.kubectl("patch", "enginemode", "default", "--type", "merge", "-p", '{"spec":{"mode":"ollama"}}',
                      namespace=NS)  # fmt: skip
            start, last, took = time.monotonic(), "", ""
            while True:
                try:
                    got = lines.get(timeout=max(0.1, 240 - (time.monotonic() - start)))
                except queue.Empty:
                    raise RuntimeError(f"the switch did not finish in 240 s: {last}") from None
                phase, active, took, message = [*got.rstrip("\n").split("|", 3), "", "", ""][:4]
                line = f"EngineMode: {phase} ({message})"
                if line != last:
                    note(f"{time.monotonic() - start:5.1f}s  {line}")
                    last = line
                if phase == "Ready" and active == "ollama":
                    break
        finally:
            watch.terminate()
        note(f"switch took {took}s (the vLLM pod was gone before the Ollama pod was created)")
        for _ in range(30):  # where the time went, as the operator saw it (its event follows the status)
            done = [e for e in c.list("events", NS) if e["involvedObject"]["kind"] == "EngineMode"
                    and e["reason"] == "SwitchCompleted"]  # fmt: skip
            if done:
                note(f"{DIM}{max(done, key=lambda e: e['metadata']['creationTimestamp'])['message']}{OFF}")
                break
            time.sleep(0.1)

        step(6, "The same model name, now served by the real Ollama pod")
        lc.wait_until(lambda: self.ask(client, "qwen", quiet=True) == "qwen-ollama", 60, "routing to Ollama")
        self.ask(client, "qwen")
        self.ask(client, "tiny")
        note("(the tiny model has random weights: real tokens through the real engines, no meaning)")

        step(7, "Try it yourself")
        page = httpx.get(url + "/ui/", timeout=5)
        page.raise_for_status()  # the admin page is served by the same gateway
        print(f"""
      export KUBECONFIG={c.kubeconfig}
      export PATH={":".join(c.bin_dirs)}:$PATH
      kubectl -n {NS} get ie,em,pods -o wide
      curl -s {url}/v1/chat/completions -H 'Authorization: Bearer sk-demo' \\
           -d '{{"model":"qwen","messages":[{{"role":"user","content":"hi"}}]}}' -i
      kubectl -n {NS} patch enginemode default --type merge -p '{{"spec":{{"mode":"vllm"}}}}'
      curl -s {url}/admin/engines -H 'Authorization: Bearer admin-demo'
      open {url}/ui/ in a browser: admin key admin-demo, API key sk-demo (engines, mode cards, playground)
      kubectl -n {NS} logs deployment/{chart.fullname(RELEASE)}-operator
""")
        finished()
        if wait:
            print(f"{BOLD}Running. Press Ctrl-C to stop everything the demo started.{OFF}", flush=True)
            while True:
                time.sleep(3600)

    def resources(self) -> list[dict[str, Any]]:
        def ie(name: str, spec: dict[str, Any], switched: bool = True) -> dict[str, Any]:
            meta: dict[str, Any] = {"name": name, "labels": SWITCHED if switched else {}}
            return {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine", "metadata": meta,
                    "spec": {"cache": {"existingClaim": "demo-models"}, **spec}}  # fmt: skip

        return [
            {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "EngineMode", "metadata": {"name": "default"},
             "spec": {"mode": "vllm", "selector": {"matchLabels": SWITCHED},
                      "switchPolicy": {"drainSeconds": 2, "maxHoldSeconds": 60}}},
            ie("qwen-vllm", {"engine": "vllm", "model": {"source": "Qwen/Qwen2.5-7B-Instruct",
                                                        "servedName": "qwen2.5-7b-instruct", "aliases": ["qwen"]},
                             "vllm": {"maxModelLen": 32768}}),
            ie("qwen-ollama", {"engine": "ollama", "model": {"source": "qwen2.5:7b", "servedName": "qwen2.5:7b",
                                                            "aliases": ["qwen"]}}),
            ie("tiny-llama", {"engine": "llamacpp", "model": {"source": "/models/tiny.gguf", "servedName": "tiny"},
                              "llamacpp": {"contextSize": 2048}}, switched=False),
        ]  # fmt: skip

    def phases(self) -> dict[str, str]:
        assert self.cluster is not None
        items = self.cluster.list("ie", NS)
        return {i["metadata"]["name"]: (i.get("status") or {}).get("phase", "") for i in items}

    def ask(self, client: openai.OpenAI, model: str, quiet: bool = False) -> str:
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": "Say hello from the engine that serves you."}],
                max_tokens=12,
            )  # fmt: skip
        except openai.APIError as err:
            if not quiet:
                note(f"request failed: {err}")
            return ""
        engine = raw.headers.get("x-roundhouse-engine", "?")
        if not quiet:
            answer = (raw.parse().choices[0].message.content or "").strip()
            note(f"model={model!r} -> {BOLD}{engine}{OFF}  (reason: {raw.headers.get('x-roundhouse-route-reason')})")
            note(f"{DIM}answer: {answer[:80]!r}{OFF}")
        return engine

    def cleanup(self) -> None:
        print("\nstopping the demo...", flush=True)
        if self.cluster is not None and self.installed and not self.started_cluster:
            chart.uninstall(self.cluster, RELEASE, NS)
            note("uninstalled the release; the cluster it found keeps running")
        if self.started_cluster:
            lc.down()
            note("local cluster stopped")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--wait", action=argparse.BooleanOptionalAction, default=None,
                        help="after the tour, keep everything running until Ctrl-C (default: when run from a"
                             " terminal, and not in CI)")  # fmt: skip
    args = parser.parse_args()
    wait = args.wait if args.wait is not None else sys.stdin.isatty() and not os.environ.get("CI")
    # Ctrl-C even where the shell that started it ignores SIGINT (a background job inherits that).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    demo = Demo()
    try:
        demo.run(wait=wait)
    except KeyboardInterrupt:
        return 130
    except (lc.ClusterError, tools.ToolMissing, RuntimeError, AssertionError, subprocess.CalledProcessError) as err:
        print(f"\ndemo failed: {err}", file=sys.stderr)
        return 1
    finally:
        demo.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

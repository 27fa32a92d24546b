"""`make demo`: Roundhouse end to end on this machine, no Docker and no GPU needed.

A real control plane (built from Go modules) with simulated GPU nodes; the operator and the
gateway as their ServiceAccounts; engines whose pods kwok runs on the GPU nodes while their
traffic goes to local processes (a vLLM simulator, and a real Ollama and a real llama-server of the
pinned versions serving a tiny model); one request, a `kubectl patch enginemode`, and the next request served by
the other family.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import openai  # noqa: E402
import yaml  # noqa: E402

from tests.support import cluster as lc  # noqa: E402
from tests.support import engines, processes, tinygguf  # noqa: E402
from tests.support.processes import Process  # noqa: E402

NS = "roundhouse-system"
WORK = REPO / ".demo"
STEPS = 7
BOLD, DIM, OFF = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")


def step(n: int, text: str) -> None:
    print(f"\n{BOLD}[{n}/{STEPS}] {text}{OFF}", flush=True)


def note(text: str) -> None:
    print(f"      {text}", flush=True)


class Demo:
    def __init__(self) -> None:
        self.procs: list[Process] = []
        self.started_cluster = False
        self.cluster: lc.Cluster | None = None

    def run(self, wait: bool) -> None:
        WORK.mkdir(exist_ok=True)
        step(1, "Local control plane: kube-apiserver, etcd, controller-manager, scheduler, kwok")
        if lc.is_up():
            note("reusing the running cluster")
        else:
            note("first run builds it from the Go module proxy (about 6 minutes on two cores); later runs take seconds")
            subprocess.run([str(lc.LOCAL_CLUSTER), "up"], check=True)
            self.started_cluster = True
        c = self.cluster = lc.Cluster()
        print(c.kubectl("get", "nodes", "-L", "nvidia.com/gpu.product").stdout, end="")

        step(2, "Install: CRDs, ServiceAccounts and RBAC from manifests/install.yaml")
        docs = [d for d in yaml.safe_load_all((REPO / "manifests" / "install.yaml").read_text()) if d]
        keep = {"Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
                "RoleBinding"}  # fmt: skip
        rbac = {"apiVersion": "v1", "kind": "List", "items": [d for d in docs if d["kind"] in keep]}
        c.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(rbac))
        c.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        note("the operator and the gateway run below as processes with their ServiceAccounts' tokens")

        step(3, "Engines on this machine: a vLLM simulator, a real Ollama and a real llama-server with a tiny model")
        logs = WORK / "logs"
        vllm = self.keep(processes.enginesim("vllm", "vllm", ["qwen2.5-7b-instruct"], logs, ttft_ms=40, itl_ms=15,
                                             tokens=12).start())  # fmt: skip
        gguf = tinygguf.write(WORK / "tiny.gguf")
        models = WORK / "ollama-models"
        ollama = self.keep(engines.ollama(engines.ollama_container(), models, logs).start(timeout=60))
        engines.ollama_create(ollama, "qwen2.5:7b", gguf)  # the tiny model under the tag the engine names
        llama = self.keep(processes.llama_server(gguf, logs).start(timeout=60))
        note(f"vLLM sim {vllm.url}   Ollama {ollama.url}   llama-server {llama.url}")  # type: ignore[attr-defined]
        note("(Ollama and llama-server are the real engines of the pinned versions, built by `make engines`;"
             " vLLM needs a GPU, so a simulator speaks its protocol)")  # fmt: skip

        step(4, "The operator, and three engines: vLLM and Ollama on the simulated H100s, llama.cpp as an API")
        op_cfg = lc.token_kubeconfig(c, NS, "roundhouse-operator", WORK / "operator.kubeconfig")
        self.keep(processes.operator({**os.environ, "KUBECONFIG": str(op_cfg)}, logs, namespaces=[NS]).start())
        c.apply(self.resources(f"{llama.url}/v1"), NS)  # type: ignore[attr-defined]
        lc.wait_until(lambda: self.phases() == {"qwen-vllm": "Ready", "qwen-ollama": "Standby", "tiny-llama": "Ready"},
                      120, "engines in place")  # fmt: skip
        print(c.kubectl("get", "ie,em", "-o", "wide", namespace=NS).stdout, end="")
        print(c.kubectl("get", "pods", "-o", "wide", namespace=NS).stdout, end="")

        step(5, "The gateway: one OpenAI URL, watching the cluster as its ServiceAccount")
        gw_cfg = lc.token_kubeconfig(c, NS, "roundhouse-gateway", WORK / "gateway.kubeconfig")
        gport = int(os.environ.get("ROUNDHOUSE_DEMO_PORT", "0")) or None
        mapping = ("--endpoint-map", f"qwen-vllm={vllm.url}", "--endpoint-map", f"qwen-ollama={ollama.url}")  # type: ignore[attr-defined]
        gw = self.keep(processes.cluster_gateway(NS, gw_cfg, WORK, logs, ["sk-demo"], ["admin-demo"], extra=mapping,
                                                 port=gport, name="gateway").start())  # fmt: skip
        url = str(gw.url)  # type: ignore[attr-defined]
        client = openai.OpenAI(base_url=url + "/v1", api_key="sk-demo", max_retries=2)
        lc.wait_until(lambda: self.ask(client, "qwen", quiet=True), 30, "the gateway to route")
        self.ask(client, "qwen")

        step(6, 'kubectl patch enginemode default --type merge -p \'{"spec":{"mode":"ollama"}}\'')
        c.kubectl("patch", "enginemode", "default", "--type", "merge", "-p", '{"spec":{"mode":"ollama"}}',
                  namespace=NS)  # fmt: skip
        start, last = time.monotonic(), ""
        while True:
            st = c.get("em", "default", NS).get("status") or {}
            line = f"EngineMode: {st.get('phase')} ({st.get('message', '')})"
            if line != last:
                note(f"{time.monotonic() - start:5.1f}s  {line}")
                last = line
            if st.get("phase") == "Ready" and st.get("activeMode") == "ollama":
                break
            time.sleep(0.2)
        note(f"switch took {st.get('lastSwitchSeconds')}s (vLLM pods gone before any Ollama pod was created)")
        lc.wait_until(lambda: self.ask(client, "qwen", quiet=True) == "qwen-ollama", 30, "routing to Ollama")
        self.ask(client, "qwen")
        self.ask(client, "tiny")
        note("(the tiny llama.cpp model has random weights: real tokens through the real engine, no meaning)")

        step(7, "Try it yourself")
        page = httpx.get(url + "/ui/", timeout=5)
        page.raise_for_status()  # the admin page is served by the same gateway
        print(f"""
      export KUBECONFIG={c.kubeconfig}
      export PATH={":".join(c.bin_dirs)}:$PATH
      kubectl -n {NS} get ie,em
      curl -s {url}/v1/chat/completions -H 'Authorization: Bearer sk-demo' \\
           -d '{{"model":"qwen","messages":[{{"role":"user","content":"hi"}}]}}' -i
      kubectl -n {NS} patch enginemode default --type merge -p '{{"spec":{{"mode":"vllm"}}}}'
      curl -s {url}/admin/engines -H 'Authorization: Bearer admin-demo'
      open {url}/ui/ in a browser: admin key admin-demo, API key sk-demo (engines, mode cards, playground)
      logs: {logs}
""")
        if wait:
            print(f"{BOLD}Running. Press Ctrl-C to stop everything the demo started.{OFF}", flush=True)
            while True:
                time.sleep(3600)

    def resources(self, llama_url: str) -> list[dict[str, Any]]:
        def ie(name: str, spec: dict[str, Any]) -> dict[str, Any]:
            return {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine", "metadata": {"name": name},
                    "spec": spec}  # fmt: skip

        return [
            {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "EngineMode", "metadata": {"name": "default"},
             "spec": {"mode": "vllm", "switchPolicy": {"drainSeconds": 2, "maxHoldSeconds": 30}}},
            ie("qwen-vllm", {"engine": "vllm", "model": {"source": "Qwen/Qwen2.5-7B-Instruct",
                                                        "servedName": "qwen2.5-7b-instruct", "aliases": ["qwen"]},
                             "gpus": 1, "vllm": {"maxModelLen": 32768}}),
            ie("qwen-ollama", {"engine": "ollama", "model": {"source": "qwen2.5:7b", "servedName": "qwen2.5:7b",
                                                            "aliases": ["qwen"]}, "gpus": 1}),
            ie("tiny-llama", {"engine": "external", "model": {"source": "tiny", "servedName": "tiny"},
                              "external": {"baseURL": llama_url}}),
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

    def keep(self, proc: Process) -> Process:
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        print("\nstopping the demo...", flush=True)
        for p in reversed(self.procs):
            p.stop()
        if self.cluster is not None and not self.started_cluster:
            self.cluster.kubectl("delete", "ie,em", "--all", namespace=NS, check=False)
        if self.started_cluster:
            lc.down()
            note("local cluster stopped")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--no-wait", action="store_true", help="stop after the tour instead of waiting for Ctrl-C")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    demo = Demo()
    try:
        demo.run(wait=not args.no_wait)
    except KeyboardInterrupt:
        return 130
    except (lc.ClusterError, RuntimeError, AssertionError, subprocess.CalledProcessError) as err:
        print(f"\ndemo failed: {err}", file=sys.stderr)
        return 1
    finally:
        demo.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

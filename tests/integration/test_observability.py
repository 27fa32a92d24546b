"""The chart's dashboard and alert rules against what the real gateway and operator export: every
query names a metric they serve, promtool accepts the rules, and promtool's rule tests over series
recorded from their /metrics fire each alert where it should and stay silent on a healthy system."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_operator import small, wait_phase
from tests.support import processes, tools
from tests.support.cluster import Cluster, wait_until

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
FILES = REPO / "charts" / "roundhouse" / "files"
ARTIFACTS = REPO / "artifacts" / "observability"
KEY, ADMIN = "sk-obs", "admin-obs"
METRIC = re.compile(r"\broundhouse_[a-z_]+\b")


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, dict(s.labels), float(s.value)) for f in text_string_to_metric_families(text) for s in f.samples]


@pytest.fixture(scope="module")
def scraped(crds: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[tuple[str, dict[str, str],
                                                                                          float]]]:  # fmt: skip
    """Real /metrics of a gateway that served traffic and of an operator that reconciled a switch."""
    tmp = tmp_path_factory.mktemp("obs")
    ns = crds.create_namespace("ha")  # a namespace of this test's own operator
    sims = [processes.enginesim("vllm", f"s{i}", ["m"], ARTIFACTS).start() for i in range(2)]
    op = processes.operator(crds.env, ARTIFACTS, [ns], name="operator-obs").start()
    engine = {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine", "metadata": {"name": "m"},
              "spec": {"engine": "vllm", "model": {"source": "org/m", "servedName": "m"},
                       "endpoints": [s.url for s in sims]}}  # type: ignore[attr-defined]  # fmt: skip
    config = tmp / "obs.yaml"
    config.write_text(json.dumps(engine))
    gw = processes.gateway(config, ARTIFACTS, [KEY], [ADMIN]).start()
    try:
        url, auth = gw.url, {"Authorization": f"Bearer {KEY}"}  # type: ignore[attr-defined]
        for stream in (False, True) * 5:
            body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": stream}
            assert httpx.post(f"{url}/v1/chat/completions", json=body, headers=auth).status_code == 200
        httpx.post(f"{url}/v1/chat/completions", json={"model": "nope", "messages": []}, headers=auth)
        mode = {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "EngineMode", "metadata": {"name": "default"},
                "spec": {"mode": "vllm", "switchPolicy": {"drainSeconds": 0}}}  # fmt: skip
        crds.apply([mode, small("v", "vllm"), small("o", "ollama")], ns)
        wait_phase(crds, "em", "default", ns, "Ready")
        crds.kubectl("patch", "enginemode", "default", "--type", "merge", "-p", '{"spec":{"mode":"ollama"}}',
                     namespace=ns)  # fmt: skip
        wait_until(lambda: (st := crds.get("em", "default", ns).get("status") or {}).get("activeMode") == "ollama"
                   and st.get("phase") == "Ready", 60, "the switch to ollama done")  # fmt: skip
        text = httpx.get(f"{url}/metrics").text + httpx.get(op.metrics_url).text  # type: ignore[attr-defined]
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "metrics.txt").write_text(text)
        yield samples(text)
    finally:
        gw.stop()
        op.stop()
        for s in sims:
            s.stop()
        crds.delete_namespace(ns)


def expressions() -> dict[str, str]:
    dashboard = json.loads((FILES / "dashboard.json").read_text())
    out = {f"panel {p['title']}": t["expr"] for p in dashboard["panels"] for t in p["targets"]}
    for rule in yaml.safe_load((FILES / "alerts.yaml").read_text())["groups"][0]["rules"]:
        out[f"alert {rule['alert']}"] = rule["expr"]
    return out


def declared(text: str) -> set[str]:
    """Every metric the exposition declares (a labelled counter that never counted has no sample yet)."""
    out = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            out |= {name, *(f"{name}_{s}" for s in ("bucket", "sum", "count"))} if kind == "histogram" else {name}
    return out


def test_every_query_names_a_metric_the_gateway_or_operator_exports(scraped: list[Any]) -> None:
    exported = {name for name, _, _ in scraped} | declared((ARTIFACTS / "metrics.txt").read_text())
    missing = {where: m for where, expr in expressions().items() for m in METRIC.findall(expr) if m not in exported}
    assert not missing, missing


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        binary = tools.path("promtool")
    except tools.ToolMissing as err:
        pytest.fail(str(err), pytrace=False)
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120)


def test_promtool_accepts_the_rules() -> None:
    proc = promtool("check", "rules", str(FILES / "alerts.yaml"))
    assert proc.returncode == 0 and "SUCCESS: 6 rules found" in proc.stdout, proc.stdout + proc.stderr


def series(scraped: list[Any], change: dict[str, float] | None = None) -> list[dict[str, str]]:
    """promtool input series from a scrape: counters keep growing (a working system), gauges hold
    still; `change` sets gauges by name."""
    out = []
    for name, labels, value in scraped:
        if not name.startswith("roundhouse_"):
            continue
        sel = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        growing = name.endswith(("_total", "_count", "_sum", "_bucket"))
        v = (change or {}).get(name, value)
        out.append({"series": f"{name}{{{sel}}}", "values": f"{v:g}+1x40" if growing else f"{v:g}x40"})
    return out


def test_the_alerts_fire_where_they_should_over_recorded_series(scraped: list[Any], tmp_path: Path) -> None:
    engine = next(labels["engine"] for name, labels, _ in scraped if name == "roundhouse_gateway_endpoint_healthy")
    healthy = {"interval": "1m", "input_series": series(scraped), "alert_rule_test": [
        {"eval_time": "30m", "alertname": a, "exp_alerts": []} for a in (
            "RoundhouseNoHealthyEngine", "RoundhouseErrorRatio", "RoundhouseSwitchStuck", "RoundhouseEngineNotReady",
            "RoundhouseOperatorNotReconciling", "RoundhouseStateStoreDegraded")]}  # fmt: skip
    broken = {
        "interval": "1m",
        "input_series": series(
            scraped,
            {
                "roundhouse_gateway_endpoint_healthy": 0,
                "roundhouse_operator_engine_ok": 0,
                "roundhouse_operator_mode_switch_age_seconds": 600,
                "roundhouse_gateway_state_degraded": 1,
            },
        ),
        "alert_rule_test": [
            {
                "eval_time": "30m",
                "alertname": "RoundhouseNoHealthyEngine",
                "exp_alerts": [{"exp_labels": {"engine": engine, "severity": "critical"}}],
            },
            {
                "eval_time": "30m",
                "alertname": "RoundhouseSwitchStuck",
                "exp_alerts": [
                    {"exp_labels": labels | {"severity": "warning"}}
                    for name, labels, _ in scraped
                    if name == "roundhouse_operator_mode_switch_age_seconds"
                ],
            },
            {
                "eval_time": "30m",
                "alertname": "RoundhouseStateStoreDegraded",
                "exp_alerts": [
                    {"exp_labels": labels | {"severity": "warning"}}
                    for name, labels, _ in scraped
                    if name == "roundhouse_gateway_state_degraded"
                ],
            },
            {
                "eval_time": "30m",
                "alertname": "RoundhouseEngineNotReady",
                "exp_alerts": [
                    {"exp_labels": labels | {"severity": "warning"}}
                    for name, labels, _ in scraped
                    if name == "roundhouse_operator_engine_ok"
                ],
            },
        ],
    }
    stopped = {
        "interval": "1m",
        "input_series": [s for s in series(scraped) if "reconciles_total" not in s["series"]],
        "alert_rule_test": [
            {
                "eval_time": "30m",
                "alertname": "RoundhouseOperatorNotReconciling",
                "exp_alerts": [{"exp_labels": {"severity": "critical"}}],
            }
        ],
    }
    # promtool compares annotations too; the expressions and labels are what is tested here (check rules
    # has parsed the annotations' templates), so the rules under test are the same without them.
    rules = yaml.safe_load((FILES / "alerts.yaml").read_text())
    for rule in rules["groups"][0]["rules"]:
        rule.pop("annotations", None)
    (tmp_path / "alerts.yaml").write_text(yaml.safe_dump(rules))
    doc = {"rule_files": ["alerts.yaml"], "evaluation_interval": "1m", "tests": [healthy, broken, stopped]}
    path = tmp_path / "alerts_test.yaml"
    path.write_text(yaml.safe_dump(doc))
    proc = promtool("test", "rules", str(path))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
